//! `{% lorem %}`: Django's lorem ipsum text. The common paragraph and words are fixed;
//! where Django adds random words or paragraphs we repeat the common words (Django's output
//! there differs on every render anyway).

const COMMON_P: &str = "Lorem ipsum dolor sit amet, consectetur adipisicing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum.";

const COMMON_WORDS: [&str; 19] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipisicing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
];

/// `count` words (`w`), or paragraphs as plain text (`b`) or `<p>` elements (`p`).
pub fn lorem(count: i64, method: char, common: bool) -> String {
    let count = count.max(0) as usize;
    let word = |i: usize| COMMON_WORDS[i % COMMON_WORDS.len()];
    if method == 'w' {
        let words: Vec<&str> = if common {
            (0..count).map(word).collect()
        } else {
            (0..count).map(|i| word(i * 7 + 3)).collect()
        };
        return words.join(" ");
    }
    let paras: Vec<String> = (0..count)
        .map(|i| {
            if i == 0 && common {
                return COMMON_P.to_owned();
            }
            let words: Vec<&str> = (0..40).map(|j| word(i * 13 + j * 5)).collect();
            let p = format!("{}.", words.join(" "));
            let mut chars = p.chars();
            chars
                .next()
                .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
        })
        .collect();
    if method == 'p' {
        let wrapped: Vec<String> = paras.iter().map(|p| format!("<p>{p}</p>")).collect();
        wrapped.join("\n\n")
    } else {
        paras.join("\n\n")
    }
}
