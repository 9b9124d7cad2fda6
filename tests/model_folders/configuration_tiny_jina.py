"""Configuration of a tiny random model that speaks Jina Embeddings v4's `encode_text` API (test fixture)."""

from transformers import PretrainedConfig


class TinyJinaConfig(PretrainedConfig):
    model_type = "tiny_jina_embeddings"

    def __init__(
        self,
        vocab_size: int = 151669,
        hidden_size: int = 32,
        single_vector_dim: int = 256,
        multi_vector_projector_dim: int = 128,
        max_position_embeddings: int = 512,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.single_vector_dim = single_vector_dim
        self.multi_vector_projector_dim = multi_vector_projector_dim
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)
