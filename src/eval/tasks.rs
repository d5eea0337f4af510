//! The zero-shot multiple-choice tasks, with lm-evaluation-harness's default prompts
//! (`lm_eval/tasks/<task>/*.yaml`) applied to rows of the Hugging Face datasets.

use serde_json::Value;

use crate::error::{Error, Result};

/// One multiple-choice item: the context, the choices (continuations without the
/// target delimiter) and the index of the correct one.
#[derive(Debug, Clone, PartialEq)]
pub struct McDoc {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

/// lm-eval's `target_delimiter` for all these tasks.
pub const TARGET_DELIMITER: &str = " ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Piqa,
    Sciq,
    OpenBookQa,
    HellaSwag,
}

impl Task {
    pub const ALL: [Task; 6] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Sciq,
        Task::OpenBookQa,
        Task::HellaSwag,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Piqa => "piqa",
            Task::Sciq => "sciq",
            Task::OpenBookQa => "openbookqa",
            Task::HellaSwag => "hellaswag",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name.trim())
            .ok_or_else(|| Error::UnknownTask {
                name: name.to_owned(),
                known: Self::ALL.map(Task::name).join(", "),
            })
    }

    /// Parses a comma-separated task list.
    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Self::from_name)
            .collect()
    }

    /// Applies the task's prompt to one dataset row (a JSON object of the HF features).
    pub fn doc(self, row: &Value) -> Result<McDoc> {
        let s = |key: &str| -> Result<String> {
            row.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad_row(self, &format!("missing string field `{key}`")))
        };
        match self {
            Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => {
                let (question, key_field) = if self == Task::OpenBookQa {
                    (s("question_stem")?, s("answerKey")?.trim_start().to_owned())
                } else {
                    (s("question")?, s("answerKey")?)
                };
                let choices = string_list(&row["choices"]["text"])
                    .ok_or_else(|| bad_row(self, "missing choices.text"))?;
                let labels = string_list(&row["choices"]["label"])
                    .ok_or_else(|| bad_row(self, "missing choices.label"))?;
                let gold = labels.iter().position(|l| *l == key_field).ok_or_else(|| {
                    bad_row(self, &format!("answerKey {key_field} not in labels"))
                })?;
                let context = if self == Task::OpenBookQa {
                    question
                } else {
                    format!("Question: {question}\nAnswer:")
                };
                Ok(McDoc {
                    context,
                    choices,
                    gold,
                })
            }
            Task::Piqa => Ok(McDoc {
                context: format!("Question: {}\nAnswer:", s("goal")?),
                choices: vec![s("sol1")?, s("sol2")?],
                gold: int_field(row, "label").ok_or_else(|| bad_row(self, "missing label"))?,
            }),
            Task::Sciq => Ok(McDoc {
                context: format!(
                    "{}\nQuestion: {}\nAnswer:",
                    s("support")?.trim_start(),
                    s("question")?
                ),
                choices: vec![
                    s("distractor1")?,
                    s("distractor2")?,
                    s("distractor3")?,
                    s("correct_answer")?,
                ],
                gold: 3,
            }),
            Task::HellaSwag => {
                let ctx = format!("{} {}", s("ctx_a")?, py_capitalize(&s("ctx_b")?));
                let endings =
                    string_list(&row["endings"]).ok_or_else(|| bad_row(self, "missing endings"))?;
                Ok(McDoc {
                    context: hellaswag_preprocess(&format!("{}: {ctx}", s("activity_label")?)),
                    choices: endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                    gold: int_field(row, "label").ok_or_else(|| bad_row(self, "missing label"))?,
                })
            }
        }
    }
}

fn bad_row(task: Task, what: &str) -> Error {
    Error::Invalid(format!(
        "{} row is not in the expected Hugging Face layout: {what}",
        task.name()
    ))
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_owned))
        .collect()
}

/// An integer label that may be stored as a number or a string ("1").
fn int_field(row: &Value, key: &str) -> Option<usize> {
    match row.get(key)? {
        Value::Number(n) => n.as_u64().map(|x| x as usize),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Python's `str.capitalize()`: first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// lm-eval's `hellaswag.utils.preprocess`.
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", text): drop every shortest bracketed span.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open + 1..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + 1 + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arc_prompt_matches_lm_eval() {
        let row = json!({"question": "Why?", "answerKey": "B",
            "choices": {"text": ["a", "b"], "label": ["A", "B"]}});
        let d = Task::ArcEasy.doc(&row).unwrap();
        assert_eq!(d.context, "Question: Why?\nAnswer:");
        assert_eq!(d.gold, 1);
    }

    #[test]
    fn hellaswag_preprocessing() {
        let row = json!({"activity_label": "Cooking", "ctx_a": "A man [step] cooks.",
            "ctx_b": "THEN he", "endings": ["eats [title] it", "x"], "label": "0"});
        let d = Task::HellaSwag.doc(&row).unwrap();
        assert_eq!(d.context, "Cooking: A man cooks. Then he");
        assert_eq!(d.choices[0], "eats. it");
        assert_eq!(d.gold, 0);
    }

    #[test]
    fn unknown_task_names_the_known_ones() {
        let err = Task::parse_list("arc_easy,mmlu").unwrap_err();
        assert!(err.to_string().contains("piqa"), "{err}");
        let row = json!({"goal": "x"});
        assert!(Task::Piqa.doc(&row).is_err());
    }
}
