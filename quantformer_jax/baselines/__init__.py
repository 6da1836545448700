"""Baselines: parameter-free forecasts and classifiers (naive.py), LSTMs (lstm.py), and the
Informer/Autoformer/Crossformer ports. The trained ones share the finetuning call signature
`model.apply(variables, inputs, train=...)` so the forecasting and classification trainers run them.
"""
