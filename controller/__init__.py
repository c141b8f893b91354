"""vfence core: model, compiler, reconciler, store, service, API, CLI."""
