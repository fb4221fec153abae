from reference.fixtures import one_cpu_thread  # noqa: F401  (autouse: tiny models run faster on one thread)
