//! Typed configuration read once at cold start. Every problem is collected, so a bad deployment
//! fails with one message that names all of them instead of one per redeploy.

use std::fmt;

/// Looks a variable up by name.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads variables from a lookup function (the process environment in production, a map in
/// tests) and remembers every problem it meets.
pub struct EnvReader<'a> {
    lookup: Lookup<'a>,
    problems: Vec<String>,
}

impl<'a> EnvReader<'a> {
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(lookup),
            problems: Vec::new(),
        }
    }

    pub fn from_process_env() -> EnvReader<'static> {
        EnvReader::new(|k| std::env::var(k).ok())
    }

    /// A reader over fixed `(key, value)` pairs (tests, and tools that build an environment).
    pub fn from_pairs(vars: &[(&str, &str)]) -> EnvReader<'static> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvReader::new(move |k| map.get(k).cloned())
    }

    /// The value, trimmed; `None` when unset or blank.
    pub fn optional(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&mut self, key: &str) -> String {
        match self.optional(key) {
            Some(v) => v,
            None => {
                self.problems.push(format!("{key} is missing"));
                String::new()
            }
        }
    }

    /// A URL that must be http(s).
    pub fn required_url(&mut self, key: &str) -> String {
        let v = self.required(key);
        if !(v.is_empty() || v.starts_with("https://") || v.starts_with("http://")) {
            self.problems
                .push(format!("{key} must be an http(s) URL, got `{v}`"));
        }
        v
    }

    /// An http(s) base URL without its trailing `/`, or `default` when unset.
    pub fn base_url(&mut self, key: &str, default: &str) -> String {
        let v = self.optional(key).unwrap_or_else(|| default.to_owned());
        if !(v.starts_with("https://") || v.starts_with("http://")) {
            self.problems
                .push(format!("{key} must be an http(s) URL, got `{v}`"));
        }
        v.trim_end_matches('/').to_owned()
    }

    /// A comma-separated list of http(s) base URLs (each without its trailing `/`); empty when
    /// unset.
    pub fn url_list(&mut self, key: &str) -> Vec<String> {
        let list: Vec<String> = self
            .optional(key)
            .unwrap_or_default()
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for u in &list {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                self.problems
                    .push(format!("{key} must list http(s) URLs, got `{u}`"));
            }
        }
        list
    }

    /// A number in `min..=max`, or `default` when unset.
    pub fn number(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.optional(key) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problems.push(format!(
                        "{key} must be a whole number from {min} to {max}, got `{v}`"
                    ));
                    default
                }
            },
        }
    }

    /// Applies `parse` to the value (or `default` when unset), recording its error.
    pub fn parsed<T>(
        &mut self,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.optional(key) {
            None => default,
            Some(v) => match parse(&v) {
                Ok(t) => t,
                Err(e) => {
                    self.problems.push(e);
                    default
                }
            },
        }
    }

    pub fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    /// `Ok(value)` when no problem was recorded, else every problem at once.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({} problem{}): {}",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" },
            self.problems.join("; ")
        )
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn collects_every_problem_before_failing() {
        let env: HashMap<&str, &str> = HashMap::from([("N", "abc"), ("U", "ftp://x")]);
        let mut r = EnvReader::new(|k| env.get(k).map(|v| v.to_string()));
        r.required("A");
        r.required_url("U");
        r.number("N", 1, 1, 10);
        let err = r.finish(()).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        let text = err.to_string();
        assert!(text.contains("A is missing"));
        assert!(text.contains("U must be an http(s) URL"));
        assert!(text.contains("N must be a whole number"));
    }

    #[test]
    fn blank_counts_as_missing_and_defaults_apply() {
        let env: HashMap<&str, &str> = HashMap::from([("A", "  ")]);
        let mut r = EnvReader::new(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(r.number("N", 7, 1, 10), 7);
        r.required("A");
        assert_eq!(r.finish(()).unwrap_err().problems, vec!["A is missing"]);
    }
}
