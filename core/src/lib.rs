//! Wharf core.
