//! A whole tree's effective modes computed from its nodes' own modes, for reading
//! commands and routes that show many scopes at once (one read, not one per node).

use super::{ScopeMode, ScopePath, ScopeState};
use std::collections::HashMap;

/// Every scope of `all` under `under` (every scope without it; `under` included), in
/// tree order (parents before children, siblings by name), each with its effective
/// mode: the strictest of the root (`root_engaged`: the kill switch), its ancestors
/// and its own.
pub fn effective_tree<'a>(
    all: &'a [ScopeState],
    root_engaged: bool,
    under: Option<&ScopePath>,
) -> Vec<(&'a ScopeState, ScopeMode)> {
    let own: HashMap<&str, ScopeMode> = all.iter().map(|s| (s.path.as_str(), s.mode)).collect();
    let root = if root_engaged {
        ScopeMode::Halted
    } else {
        ScopeMode::Normal
    };
    let mut rows: Vec<_> = all
        .iter()
        .filter(|s| under.is_none_or(|u| u.contains(&s.path)))
        .map(|s| {
            let effective = s
                .path
                .ancestors()
                .iter()
                .filter_map(|a| own.get(a.as_str()).copied())
                .fold(root.stricter(s.mode), ScopeMode::stricter);
            (s, effective)
        })
        .collect();
    rows.sort_by(|a, b| a.0.path.segments().cmp(b.0.path.segments()));
    rows
}
