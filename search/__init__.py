"""Hyperparameter search service: Optuna studies over ``training.train``, stored through SQLAlchemy."""
