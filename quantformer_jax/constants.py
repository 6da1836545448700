"""Allen Brain Observatory and QuantFormer facts, in one place.

Every number here comes from the Brain Observatory white paper, the allensdk reader, or the
original QuantFormer code (see ../shared/REFERENCE.md and ALLEN_FORMAT.md in the design notes).
"""

# --- Acquisition -------------------------------------------------------------------------------
SAMPLING_RATE_HZ = 30.0  # two-photon frame rate; 1 frame ~ 33.3 ms
FRAME_SECONDS = 1.0 / SAMPLING_RATE_HZ

# --- QuantFormer windows -----------------------------------------------------------------------
SOURCE_FRAMES = 96  # frames before stimulus onset given to the model (3.2 s)
FORECAST_FRAMES = 64  # frames after onset to forecast (2.13 s)
WINDOW_FRAMES = SOURCE_FRAMES + FORECAST_FRAMES  # 160, onset at window frame 96
BASELINE_FRAMES = 60  # f0 = mean of the 60 frames just before onset
PATCH_LEN = 16  # frames per token -> 10 patches per window (6 source + 4 forecast)
NUM_PATCHES = WINDOW_FRAMES // PATCH_LEN
STIM_RESPONSE_FRAMES = {
    "drifting_gratings": 60,
    "static_gratings": 15,
    "natural_scenes": 15,
    "locally_sparse_noise": 15,
}
ACTIVATION_THRESHOLD = 0.1  # tsai_wen: mean |dF/F| over the response frames > 0.1

# --- Drifting gratings protocol (white paper, June 2017) -----------------------------------------
DG_DIRECTIONS_DEG = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
DG_TEMPORAL_FREQUENCIES_HZ = (1.0, 2.0, 4.0, 8.0, 15.0)
DG_SPATIAL_FREQUENCY_CPD = 0.04
DG_REPEATS = 15
DG_ON_FRAMES = 60  # 2 s grating
DG_OFF_FRAMES = 30  # 1 s mean grey
SG_ORIENTATIONS_DEG = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
SG_SPATIAL_FREQUENCIES_CPD = (0.02, 0.04, 0.08, 0.16, 0.32)
SG_PHASES = (0.0, 0.25, 0.5, 0.75)

# Gap (frames) above which allensdk's epoch table starts a new epoch, per session type.
EPOCH_GAP_THRESHOLD_FRAMES = {
    "three_session_A": 39,
    "three_session_B": 15,
    "three_session_C": 7,
    "three_session_C2": 7,
}

# --- allensdk NWB layout -------------------------------------------------------------------------
PIPELINE_GROUP = "processing/brain_observatory_pipeline"
SUPPORTED_PIPELINE_VERSION = "3.0"
MANIFEST_VERSION = "1.3"

# --- The original evaluation containers (REFERENCE.md section 1.2) --------------------------------
# container id -> {session letter: ophys experiment id}
CONTAINERS = {
    511507650: {"A": 502115959, "B": 501794235, "C": 500855614},
    511510667: {"A": 501574836, "B": 501498760, "C": 501773889},
    511510675: {"A": 510214538, "B": 509962140, "C": 509729072},
    511510699: {"A": 502608215, "B": 502810282, "C": 502974807},
    511510718: {"A": 510514474, "B": 510345479, "C": 510174759},
    511510779: {"A": 503109347, "B": 503019786, "C": 502634578},
    511510855: {"A": 510517131, "B": 510705057, "C": 509644421},
    511510989: {"A": 501729039, "B": 501567237, "C": 501788003},
    526481129: {"A": 527048992, "B": 528480613, "C": 526768996},
    536323956: {"A": 540684467, "B": 541048140, "C": 539515366},
    543677425: {"A": 545446482, "B": 544507627, "C": 543677427},
}
FINETUNE_CONTAINER = 511507650  # the README's finetuning container
STIMULUS_SESSION = {
    "drifting_gratings": "A",
    "static_gratings": "B",
    "natural_scenes": "B",
    "locally_sparse_noise": "C",
}

# --- Defaults of the original code ---------------------------------------------------------------
DEFAULT_SEED = 42
