//! Known names and their near misses: what every registry of names (symbols, scope
//! paths) answers when it is asked for a name it does not know — the known name the
//! caller most likely meant, so that a typo is refused naming the right one.

/// The largest edit distance (between folded keys) still called a near miss.
pub const NEAR: usize = 2;

/// The known name `text` was most likely meant as: the first one whose folded key
/// equals `text`'s, else the closest within [`NEAR`] edits of the folded keys. `None`
/// when nothing is close. `fold` says which spellings a registry treats as the same
/// (case, punctuation).
pub fn nearest<'a, T: AsRef<str> + ?Sized + 'a>(
    text: &str,
    known: impl IntoIterator<Item = &'a T>,
    fold: impl Fn(&str) -> String,
) -> Option<&'a T> {
    let key = fold(text);
    let mut best: Option<(usize, &'a T)> = None;
    for candidate in known {
        let distance = edit_distance(&key, &fold(candidate.as_ref()));
        if distance <= NEAR && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_within_two_edits_of_the_folded_keys() {
        let known = ["ETH-USD", "BTC-USD"];
        let fold = |s: &str| s.to_ascii_uppercase();
        assert_eq!(
            nearest("eth-usd", known.iter().copied(), fold),
            Some("ETH-USD")
        );
        assert_eq!(
            nearest("ETH-UDS", known.iter().copied(), fold),
            Some("ETH-USD")
        );
        assert_eq!(nearest("SOL-EUR", known.iter().copied(), fold), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
