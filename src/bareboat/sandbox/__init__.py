"""The sandbox layer: what every front end (`bareboat` and its Engine, `bareboat-runtime`)
uses to run one sandbox, whatever its isolation, and what the backends sit under.

- `status`: one status enum and its transitions;
- `layout`: one sandbox directory layout (the files a sandbox keeps, named once);
- `supervisor`: the supervisor process of a sandbox under the OCI contract (the gate that
  waits for `start` and ends with the workload);
- `microvm`, `process`, `wasm`: each isolation's operations, over its backend's public API.

Front ends import this package, never `bareboat.backends` (import-linter holds it). The
modules are small and import lazily: `bareboat-runtime` runs them 3-5 times per container.
"""
