//! fencing (work in progress)
