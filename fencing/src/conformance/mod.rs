//! The contracts of [`LeaseFencer`](crate::LeaseFencer) and of fenced writes, as one
//! public async fn per behaviour.
//!
//! Every lease store runs the whole list through
//! [`conformance_tests!`](crate::conformance_tests), and every fenced resource
//! (through a small [`FencedLog`] adapter) runs
//! [`fence_conformance_tests!`](crate::fence_conformance_tests); both expand into
//! individually named `#[tokio::test]`s so that a failure names the behaviour. The
//! in-memory store is held to exactly what PostgreSQL does: where time must pass the
//! tests use short real ttls (300 ms), so both stores judge the same expiry.
//!
//! Each function expects a fresh store (no leases) or a fresh log.

mod fenced_write;
mod lease_store;

pub use fenced_write::{
    fence_aborted_write_leaves_no_trace, fence_accepts_first_equal_and_newer_tokens,
    fence_concurrent_writers_never_regress, fence_invalid_input_is_refused,
    fence_refuses_an_older_token_naming_both, fence_resources_are_independent, FencedLog,
};
pub use lease_store::{
    a_held_resource_is_refused_naming_the_holder, acquire_grants_a_free_resource,
    an_expired_lease_can_be_taken_and_its_token_is_superseded,
    concurrent_acquires_grant_exactly_one, invalid_input_is_refused_and_changes_nothing,
    names_are_stored_verbatim, reacquire_by_the_same_holder_supersedes_its_lease,
    release_frees_the_resource_and_tokens_keep_rising,
    release_is_idempotent_and_never_frees_a_newer_holder,
    renew_extends_the_lease_and_keeps_the_token, renewing_an_expired_lease_is_lease_lost,
    resources_are_independent, the_local_deadline_comes_before_the_store_expiry,
    tokens_strictly_increase_over_many_grants,
};
