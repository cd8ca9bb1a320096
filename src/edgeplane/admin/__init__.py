"""The control plane: Admin API, store, releases, auth, node sync."""
