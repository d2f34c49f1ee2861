"""NYC taxi fare model: raw schema, synthetic data, features, training and evaluation."""
