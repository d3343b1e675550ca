"""The drift benchmark: a pretrained 32x32 text-to-image model, a personalization task, and its scores."""
