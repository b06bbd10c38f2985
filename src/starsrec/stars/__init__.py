"""STARS: the model (which owns the score), event windows to tensors, repeat features,
training, calibration after training, the recommender behind the contract, and the ONNX export."""
