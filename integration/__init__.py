"""Framework bindings (installed as `quartet_te.integration`): Megatron-Core in `megatron`."""
