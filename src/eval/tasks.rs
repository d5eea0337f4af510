//! The zero-shot multiple-choice tasks, with lm-evaluation-harness's default prompts
//! (`lm_eval/tasks/<task>/*.yaml`) applied to rows of the Hugging Face datasets.

use serde_json::Value;

use crate::error::{Error, Result};

/// One multiple-choice item: the context, the choices (continuations without the
/// target delimiter) and the index of the correct one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct McDoc {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
    /// WinoGrande's partial evaluation (lm-eval's "multiple input"): each choice ends a context
    /// of its own (`context` + choice) and this same continuation is scored after each.
    pub shared_continuation: Option<String>,
}

impl McDoc {
    /// The (context, continuation) text pair each choice is scored as, in choice order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.choices
            .iter()
            .map(|c| match &self.shared_continuation {
                None => (self.context.clone(), format!("{TARGET_DELIMITER}{c}")),
                Some(cont) => (
                    format!("{}{c}", self.context),
                    format!("{TARGET_DELIMITER}{cont}"),
                ),
            })
            .collect()
    }
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
    WinoGrande,
    Copa,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Sciq,
        Task::OpenBookQa,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::Copa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Piqa => "piqa",
            Task::Sciq => "sciq",
            Task::OpenBookQa => "openbookqa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
            Task::Copa => "copa",
        }
    }

    /// Whether lm-eval reports `acc_norm` for the task (WinoGrande and COPA: `acc` only; ours
    /// is still computed, by lm-eval's formula, over the choices as written).
    pub fn reports_acc_norm(self) -> bool {
        !matches!(self, Task::WinoGrande | Task::Copa)
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
                    ..McDoc::default()
                })
            }
            Task::Piqa => Ok(McDoc {
                context: format!("Question: {}\nAnswer:", s("goal")?),
                choices: vec![s("sol1")?, s("sol2")?],
                gold: int_field(row, "label").ok_or_else(|| bad_row(self, "missing label"))?,
                ..McDoc::default()
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
                ..McDoc::default()
            }),
            Task::HellaSwag => {
                let ctx = format!("{} {}", s("ctx_a")?, py_capitalize(&s("ctx_b")?));
                let endings =
                    string_list(&row["endings"]).ok_or_else(|| bad_row(self, "missing endings"))?;
                Ok(McDoc {
                    context: hellaswag_preprocess(&format!("{}: {ctx}", s("activity_label")?)),
                    choices: endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                    gold: int_field(row, "label").ok_or_else(|| bad_row(self, "missing label"))?,
                    ..McDoc::default()
                })
            }
            // lm-eval's winogrande/preprocess_winogrande.py: the sentence up to the blank with
            // each option is the context, what follows the blank the continuation.
            Task::WinoGrande => {
                let sentence = s("sentence")?;
                let blank = sentence
                    .find('_')
                    .ok_or_else(|| bad_row(self, "the sentence has no `_` blank"))?;
                let gold = match s("answer")?.as_str() {
                    "1" => 0,
                    "2" => 1,
                    other => return Err(bad_row(self, &format!("answer {other:?} is not 1 or 2"))),
                };
                Ok(McDoc {
                    context: sentence[..blank].to_owned(),
                    choices: vec![s("option1")?, s("option2")?],
                    gold,
                    shared_continuation: Some(py_strip(&sentence[blank + 1..]).to_owned()),
                })
            }
            // lm-eval's super_glue/copa/utils.py: the premise without its final character, a
            // connector, and each choice lower-cased at its start after a space (which the
            // target delimiter then precedes: two spaces, as lm-eval scores it).
            Task::Copa => {
                let premise = s("premise")?;
                let connector = match s("question")?.as_str() {
                    "cause" => "because",
                    "effect" => "therefore",
                    other => {
                        return Err(bad_row(
                            self,
                            &format!("question {other:?} is not cause or effect"),
                        ));
                    }
                };
                let premise = py_strip(&premise);
                let mut stem = premise.chars();
                stem.next_back();
                let choice = |key: &str| -> Result<String> {
                    let text = s(key)?;
                    let mut chars = text.chars();
                    let first = chars
                        .next()
                        .ok_or_else(|| bad_row(self, &format!("empty `{key}`")))?;
                    Ok(format!(" {}{}", first.to_lowercase(), chars.as_str()))
                };
                let gold = int_field(row, "label")
                    .filter(|&g| g < 2)
                    .ok_or_else(|| bad_row(self, "label is not 0 or 1"))?;
                Ok(McDoc {
                    context: format!("{} {connector}", stem.as_str()),
                    choices: vec![choice("choice1")?, choice("choice2")?],
                    gold,
                    ..McDoc::default()
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

/// Python's `str.strip()` (Unicode whitespace at both ends).
fn py_strip(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
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

    /// lm-eval's preprocess_winogrande.py: options fill the blank at the end of their own
    /// contexts; the rest of the sentence, stripped, is scored after each.
    #[test]
    fn winogrande_scores_the_sentence_after_the_blank() {
        let row = json!({"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases. ",
            "option1": "Sarah", "option2": "Maria", "answer": "2"});
        let d = Task::WinoGrande.doc(&row).unwrap();
        assert_eq!(d.gold, 1);
        assert_eq!(
            d.pairs(),
            [
                (
                    "Sarah was a much better surgeon than Maria so Sarah".to_string(),
                    " always got the easier cases.".to_string()
                ),
                (
                    "Sarah was a much better surgeon than Maria so Maria".to_string(),
                    " always got the easier cases.".to_string()
                ),
            ]
        );
        let bad = json!({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"});
        assert!(Task::WinoGrande.doc(&bad).is_err());
    }

    /// lm-eval's super_glue/copa/utils.py: premise without its period, a connector, and
    /// each choice lower-cased after a space of its own (so two spaces after the delimiter).
    #[test]
    fn copa_connects_premise_and_choice() {
        let row = json!({"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.", "question": "effect", "label": 1});
        let d = Task::Copa.doc(&row).unwrap();
        assert_eq!(d.gold, 1);
        assert_eq!(
            d.pairs()[1],
            (
                "The man turned on the faucet therefore".to_string(),
                "  water flowed from the spout.".to_string()
            )
        );
        let cause = json!({"premise": "I wept.", "choice1": "A", "choice2": "B", "question": "cause", "label": 0});
        assert_eq!(Task::Copa.doc(&cause).unwrap().context, "I wept because");
    }

    #[test]
    fn unknown_task_names_the_known_ones() {
        let err = Task::parse_list("arc_easy,mmlu").unwrap_err();
        assert!(err.to_string().contains("piqa"), "{err}");
        let row = json!({"goal": "x"});
        assert!(Task::Piqa.doc(&row).is_err());
    }
}
