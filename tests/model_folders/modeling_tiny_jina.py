"""A tiny random model with Jina Embeddings v4's text API, loaded as remote code (test fixture).

Like Jina v4 it prefixes "Query: " or "Passage: " by prompt name, returns one row per token of the
prefixed text for `return_multivector=True` and a Matryoshka-truncatable single vector otherwise.
"""

import torch
from transformers import AutoTokenizer, PreTrainedModel

from .configuration_tiny_jina import TinyJinaConfig

PREFIXES = {"query": "Query", "passage": "Passage"}
TASKS = ("retrieval", "text-matching", "code")


class TinyJinaModel(PreTrainedModel):
    config_class = TinyJinaConfig
    base_model_prefix = "tiny_jina"

    def __init__(self, config: TinyJinaConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.embed = torch.nn.Embedding(config.vocab_size, h)
        self.pos = torch.nn.Embedding(config.max_position_embeddings, h)
        self.mix = torch.nn.TransformerEncoderLayer(h, 2, 2 * h, dropout=0.0, batch_first=True)
        self.single_vector_projector = torch.nn.Linear(h, config.single_vector_dim)
        self.multi_vector_projector = torch.nn.Linear(h, config.multi_vector_projector_dim)
        self._tokenizer = None
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(pos)[None]
        return self.mix(x, src_key_padding_mask=attention_mask == 0)

    def encode_text(
        self,
        texts,
        task="retrieval",
        max_length=32768,
        batch_size=8,
        return_multivector=False,
        return_numpy=False,
        truncate_dim=None,
        prompt_name=None,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}")
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=True)
        texts = [texts] if isinstance(texts, str) else list(texts)
        prefix = PREFIXES[prompt_name or "query"]
        out = []
        for i in range(0, len(texts), batch_size):
            batch = [f"{prefix}: {t}" for t in texts[i : i + batch_size]]
            enc = self._tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            mask = enc["attention_mask"].to(self.device)
            hidden = self(enc["input_ids"].to(self.device), mask)
            if return_multivector:
                multi = torch.nn.functional.normalize(self.multi_vector_projector(hidden), dim=-1)
                out += [multi[r][mask[r].bool()] for r in range(len(batch))]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                single = self.single_vector_projector((hidden * m).sum(1) / m.sum(1))
                if truncate_dim is not None:
                    single = single[:, :truncate_dim]
                out += list(torch.nn.functional.normalize(single, dim=-1))
        return [v.cpu().float().numpy() for v in out] if return_numpy else out
