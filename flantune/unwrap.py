"""The transformers model inside a wrapper: kernels, packing, scoring and training reach its config and blocks."""


def base_model_of(model):
    """The transformers model inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
