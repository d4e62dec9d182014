//! The README is the crate's front page: its action matrix must be the one the code
//! enforces.

#[test]
fn readme_prints_the_action_matrix_the_code_enforces() {
    let readme = include_str!("../README.md");
    let table = tradepulse_symbol_mode::SymbolMode::matrix_markdown();
    assert!(
        readme.contains(&table),
        "README.md must contain the action matrix exactly as SymbolMode::matrix_markdown() renders it:\n{table}"
    );
}
