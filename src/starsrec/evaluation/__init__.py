"""Full-ranking metrics and the evaluation harness every `Recommender` runs through."""
