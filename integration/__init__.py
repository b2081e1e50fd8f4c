"""Framework integrations of quartet-te (installed as `quartet_te.integration`).

- `quartet_te.integration.megatron`: the `--fp4-recipe quartet2` flag for Megatron-Core and
  Megatron-LM (registration, argument hook, launcher, local-spec linear layers).
Each integration imports its framework lazily; no training loop lives here.
"""
