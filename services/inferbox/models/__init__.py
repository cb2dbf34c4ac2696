"""What a model is (its spec and config), where specs are kept, and how a folder is imported."""
