"""The demo: every regularizer trained on scikit-learn's digits. Needs ``optreg[demo]``."""
