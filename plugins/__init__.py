"""First-party kalm-bench plugins; each subpackage is registered through the kalm_bench entry-point group."""
