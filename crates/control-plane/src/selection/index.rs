//! BM25F over a tool catalog, in memory. Each tool is a document with fields (name,
//! description, category, capabilities, parameters, returns, examples), each with its
//! own weight and length normalization; term frequencies are combined across fields
//! before saturation (Robertson, Zaragoza & Taylor 2004), so a word in the name and in
//! the description counts once, stronger.

use std::collections::HashMap;

use super::text::Analyzer;

pub const FIELDS: usize = 7;

/// Field order of [`Document`].
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Name = 0,
    Description = 1,
    Category = 2,
    Capabilities = 3,
    Parameters = 4,
    Returns = 5,
    Examples = 6,
}

/// The text of one tool, per field.
pub type Document = [String; FIELDS];

#[derive(Debug, Clone, Copy)]
pub struct FieldParams {
    pub weight: f32,
    /// Length normalization, 0 (none) to 1 (full).
    pub b: f32,
}

/// One setting for every catalog, tuned by coordinate search on both public datasets
/// together (`tests/examples/tune_selection.rs`; numbers in the README).
#[derive(Debug, Clone, Copy)]
pub struct Bm25Params {
    pub k1: f32,
    pub fields: [FieldParams; FIELDS],
}

impl Default for Bm25Params {
    fn default() -> Self {
        let f = |weight, b| FieldParams { weight, b };
        Self {
            k1: 1.5,
            fields: [
                f(1.0, 0.9),  // name
                f(0.6, 0.3),  // description
                f(1.0, 0.3),  // category
                f(1.0, 0.75), // capabilities
                f(2.5, 0.3),  // parameters
                f(0.0, 0.0),  // returns: measured as noise on both datasets
                f(0.6, 0.75), // examples
            ],
        }
    }
}

pub struct TextIndex {
    terms: HashMap<String, u32>,
    /// Per term: (document, combined normalized term frequency).
    postings: Vec<Vec<(u32, f32)>>,
    idf: Vec<f32>,
    docs: usize,
    k1: f32,
}

impl TextIndex {
    pub fn build(analyzer: &Analyzer, docs: &[Document], params: &Bm25Params) -> Self {
        let tokenized: Vec<[Vec<String>; FIELDS]> = docs
            .iter()
            .map(|d| std::array::from_fn(|f| analyzer.terms(&d[f])))
            .collect();
        let n = tokenized.len().max(1) as f32;
        let avg: [f32; FIELDS] =
            std::array::from_fn(|f| (tokenized.iter().map(|t| t[f].len()).sum::<usize>() as f32 / n).max(1.0));
        let mut terms: HashMap<String, u32> = HashMap::new();
        let mut postings: Vec<Vec<(u32, f32)>> = Vec::new();
        let mut tf: HashMap<u32, f32> = HashMap::new();
        for (doc, fields) in tokenized.iter().enumerate() {
            tf.clear();
            for (f, words) in fields.iter().enumerate() {
                let p = params.fields[f];
                let norm = 1.0 - p.b + p.b * words.len() as f32 / avg[f];
                for w in words {
                    let next = terms.len() as u32;
                    let id = *terms.entry(w.clone()).or_insert(next);
                    *tf.entry(id).or_default() += p.weight / norm;
                }
            }
            for (&id, &v) in &tf {
                let id = id as usize;
                if id >= postings.len() {
                    postings.resize_with(id + 1, Vec::new);
                }
                postings[id].push((doc as u32, v));
            }
        }
        let idf = postings
            .iter()
            .map(|p| {
                let df = p.len() as f32;
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            })
            .collect();
        Self {
            terms,
            postings,
            idf,
            docs: tokenized.len(),
            k1: params.k1,
        }
    }

    /// Adds each matching document's BM25F score for `query` to `scores` (indexed by
    /// document; resized as needed) and returns the documents touched.
    pub fn score(&self, query: &[String], scores: &mut Vec<f32>) -> Vec<u32> {
        if scores.len() < self.docs {
            scores.resize(self.docs, 0.0);
        }
        let mut counts: HashMap<u32, f32> = HashMap::new();
        for t in query {
            if let Some(&id) = self.terms.get(t) {
                *counts.entry(id).or_default() += 1.0;
            }
        }
        let mut touched = Vec::new();
        for (id, qtf) in counts {
            let idf = self.idf[id as usize];
            for &(doc, tf) in &self.postings[id as usize] {
                let s = &mut scores[doc as usize];
                if *s == 0.0 {
                    touched.push(doc);
                }
                *s += qtf.sqrt() * idf * tf * (self.k1 + 1.0) / (self.k1 + tf);
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, description: &str) -> Document {
        let mut d: Document = Default::default();
        d[Field::Name as usize] = name.to_owned();
        d[Field::Description as usize] = description.to_owned();
        d
    }

    #[test]
    fn the_tool_that_fits_ranks_first() {
        let a = Analyzer::default();
        let docs = [
            doc("weather_forecast", "Daily weather forecast for a city"),
            doc("word_count", "Counts the words of a text"),
            doc("currency_convert", "Converts an amount between currencies"),
        ];
        let idx = TextIndex::build(&a, &docs, &Bm25Params::default());
        let mut scores = Vec::new();
        let touched = idx.score(&a.terms("how many words are in this text?"), &mut scores);
        assert_eq!(touched, [1]);
        let mut scores = Vec::new();
        idx.score(&a.terms("what will the weather be in Paris tomorrow"), &mut scores);
        assert!(scores[0] > 0.0 && scores[1] == 0.0 && scores[2] == 0.0);
    }
}
