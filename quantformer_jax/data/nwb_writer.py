"""Writes Brain Observatory ophys NWB 1.x files with h5py, in the layout allensdk 2.16 reads.

Follows the verified recipe of ALLEN_FORMAT.md 1.10: every metadata value a fixed-length byte
string scalar, `general/generated_by[-1] == "3.0"` (or no generated_by for a pipeline-0.9 file),
traces (n_cells, n_frames) under processing/brain_observatory_pipeline, ROI masks as
(512, 512) uint8 `img_mask`, and only `<stimulus>_stimulus` groups under stimulus/presentation.
"""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np

from quantformer_jax.constants import PIPELINE_GROUP

FOV_PX = 512


def _s(text: str) -> np.bytes_:
    return np.bytes_(text.encode("utf-8"))


def _sa(items: list[str]) -> np.ndarray:
    return np.array([x.encode("utf-8") for x in items])


@dataclasses.dataclass
class NwbContent:
    """Everything one file holds. Traces are float32 [n_cells, n_frames]."""

    general: dict[str, str]  # path below general/ -> text (metadata, ALLEN_FORMAT.md 1.1)
    session_start_time: str
    timestamps: np.ndarray  # float64 [T] seconds
    cell_specimen_ids: np.ndarray  # int64 [N]
    roi_ids: np.ndarray  # int64 [N]
    raw: np.ndarray
    demixed: np.ndarray
    neuropil: np.ndarray
    neuropil_r: np.ndarray  # float64 [N]
    dff: np.ndarray
    running_speed: np.ndarray  # float32 [T] cm/s
    motion_xy: np.ndarray  # float32 [T, 2] pixels
    roi_masks: list[np.ndarray]  # N bool (512, 512)
    max_projection: np.ndarray  # uint16 (512, 512)
    # group name ("drifting_gratings_stimulus") -> datasets (data, frame_duration, features...)
    stimuli: dict[str, dict[str, np.ndarray]]


def write_nwb(
    path: str | os.PathLike,
    content: NwbContent,
    *,
    pipeline_version: str | None = "3.0",
    compression: str | None = None,
) -> None:
    """Writes `content` to `path` (overwriting it).

    Args:
      path: output .nwb file.
      content: the arrays and metadata.
      pipeline_version: last entry of general/generated_by; None writes a pipeline-0.9 file (no
        generated_by; neuropil and r only under Fluorescence/imaging_plane_1, no demixed group).
      compression: h5py filter for the big trace datasets (None or "gzip"); read transparently.
    """
    trace_kw = {"compression": compression} if compression else {}
    names = [f"roi_{i:04d}" for i in range(len(content.cell_specimen_ids))]
    ts = np.asarray(content.timestamps, dtype=np.float64)
    with h5py.File(path, "w") as f:
        f["session_start_time"] = _s(content.session_start_time)
        f["session_description"] = _s("Simulated Brain Observatory ophys session (quantformer_jax)")
        f["identifier"] = _s(f"quantformer_jax-sim-{content.general['session_id']}")
        f["nwb_version"] = _s("NWB-1.0.5")
        g = f.create_group("general")
        for key, value in content.general.items():
            g[key] = _s(value)
        if pipeline_version is not None:
            g["generated_by"] = _sa(["quantformer_jax", "simulate", "pipeline", pipeline_version])
        p = f.create_group(PIPELINE_GROUP)

        def series(group_path: str, data: np.ndarray, big: bool = True, **extra) -> h5py.Group:
            grp = p.create_group(group_path)
            grp.create_dataset("data", data=data, **(trace_kw if big else {}))
            grp["timestamps"] = ts
            grp["num_samples"] = np.int64(len(ts))
            for key, value in extra.items():
                grp[key] = value
            return grp

        roi_names = _sa(names)
        r = np.asarray(content.neuropil_r, dtype=np.float64)
        if pipeline_version is None:
            series(
                "Fluorescence/imaging_plane_1",
                content.raw,
                roi_names=roi_names,
                r=r,
                neuropil_traces=content.neuropil,
            )
        else:
            series("Fluorescence/imaging_plane_1", content.raw, roi_names=roi_names, r=r)
            series(
                "Fluorescence/imaging_plane_1_demixed_signal", content.demixed, roi_names=roi_names
            )
            series(
                "Fluorescence/imaging_plane_1_neuropil_response",
                content.neuropil,
                roi_names=roi_names,
                r=r,
            )
        dff = series("DfOverF/imaging_plane_1", content.dff, roi_names=roi_names)
        dff["data"].attrs["unit"] = "frame"  # the real files' legacy quirk (values are dF/F)
        series("BehavioralTimeSeries/running_speed", content.running_speed, big=False)
        series(
            "MotionCorrection/2p_image_series/xy_translation",
            content.motion_xy,
            big=False,
            feature_description=_sa(["x_motion", "y_motion"]),
        )
        seg = p.create_group("ImageSegmentation")
        seg["cell_specimen_ids"] = np.asarray(content.cell_specimen_ids, dtype=np.int64)
        seg["roi_ids"] = _sa([str(int(i)) for i in content.roi_ids])
        plane = seg.create_group("imaging_plane_1")
        plane["roi_list"] = roi_names
        for name, mask in zip(names, content.roi_masks, strict=True):
            roi = plane.create_group(name)
            roi.create_dataset("img_mask", data=mask.astype(np.uint8), compression="gzip")
            ys, xs = np.nonzero(mask)
            roi["pix_mask"] = np.stack([xs, ys]).astype(np.uint16)
            roi["pix_mask_weight"] = np.ones(len(xs), dtype=np.float32)
            roi["roi_description"] = _s("simulated soma")
        plane.create_dataset(
            "reference_images/maximum_intensity_projection_image/data",
            data=content.max_projection,
            compression="gzip",
        )
        f.create_dataset("acquisition/timeseries/2p_image_series/timestamps", data=ts)
        pres = f.create_group("stimulus/presentation")
        for group_name, datasets in content.stimuli.items():
            grp = pres.create_group(group_name)
            for key, value in datasets.items():
                grp[key] = value
        f.create_group("stimulus/templates")


def roi_masks(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Disc-shaped somata at random positions and a matching max-projection image (uint16)."""
    yy, xx = np.mgrid[:FOV_PX, :FOV_PX]
    centers = rng.uniform(20, FOV_PX - 20, (n, 2))
    radii = rng.uniform(5.0, 9.0, n)
    masks = []
    image = 400.0 + 40.0 * rng.standard_normal((FOV_PX, FOV_PX))
    for (cy, cx), rad, bright in zip(centers, radii, rng.uniform(600, 2500, n), strict=True):
        y0, y1 = int(cy - rad - 1), int(cy + rad + 2)
        x0, x1 = int(cx - rad - 1), int(cx + rad + 2)
        mask = np.zeros((FOV_PX, FOV_PX), dtype=bool)
        mask[y0:y1, x0:x1] = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= rad**2
        image[y0:y1, x0:x1] += bright * mask[y0:y1, x0:x1]
        masks.append(mask)
    return masks, np.clip(image, 0, 65535).astype(np.uint16)
