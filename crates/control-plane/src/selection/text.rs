//! Tokenization for tool retrieval: split identifiers (camelCase, snake_case,
//! kebab-case, digits), lowercase, drop English stop words, Snowball-stem.

use rust_stemmers::{Algorithm, Stemmer};

/// Common English words that carry no signal about which tool fits, plus the filler of
/// API descriptions ("api", "endpoint" stay: some tools are about APIs).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "might",
    "more",
    "most",
    "must",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "please",
    "same",
    "shall",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "us",
    "very",
    "want",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "also",
    "get",
    "give",
    "let",
    "like",
    "need",
    "provide",
    "use",
    "using",
    "help",
    "know",
    "tell",
    "find",
    "show",
    "make",
    "able",
    "etc",
    "e",
    "g",
    "ie",
    "eg",
];

pub struct Analyzer {
    stemmer: Stemmer,
    stop: std::collections::HashSet<&'static str>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            stemmer: Stemmer::create(Algorithm::English),
            stop: STOP_WORDS.iter().copied().collect(),
        }
    }
}

/// Splits `text` into words at non-alphanumerics, lower→upper case changes
/// (`getWeather`), acronym ends (`HTTPServer` → `HTTP`, `Server`) and letter/digit
/// changes (`v2api` → `v`, `2`, `api`).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(&prev) = cur.chars().last().as_ref() {
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary = (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase() && c.is_uppercase() && next_lower)
                || (prev.is_alphabetic() != c.is_alphabetic());
            if boundary {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Analyzer {
    /// The index terms of `text`, in order (repeats kept: they are term frequencies).
    pub fn terms(&self, text: &str) -> Vec<String> {
        words(text)
            .into_iter()
            .filter_map(|w| {
                let w = w.to_lowercase();
                if w.len() < 2 && !w.chars().all(|c| c.is_ascii_digit()) || self.stop.contains(w.as_str()) {
                    return None;
                }
                Some(self.stemmer.stem(&w).into_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_split_and_stem() {
        assert_eq!(words("getWeatherForecast"), ["get", "Weather", "Forecast"]);
        assert_eq!(words("HTTPServer_v2-api"), ["HTTP", "Server", "v", "2", "api"]);
        let a = Analyzer::default();
        assert_eq!(
            a.terms("Get the weather forecasts for cities"),
            ["weather", "forecast", "citi"]
        );
        assert_eq!(a.terms("word_count counting words"), ["word", "count", "count", "word"]);
    }
}
