//! OCI image store: registry pull, layout import/export, layer unpacking, Dockerfile builds.
