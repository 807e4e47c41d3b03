//! The `filters` query parameter of list, prune and events endpoints.
//!
//! dockerd reads it as JSON, either `{"key":["v1","v2"]}` or the legacy `{"key":{"v1":true}}`
//! (`filters.FromJSON`). It is parsed here into one form, changed (the namespace's label added,
//! name filters taken out to be applied to the names the client knows) and written back.

use std::collections::BTreeMap;

use serde_json::Value;

use super::NsError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> Result<Filters, NsError> {
        let mut out = BTreeMap::new();
        let raw = match raw {
            None => return Ok(Filters(out)),
            Some(r) if r.trim().is_empty() => return Ok(Filters(out)),
            Some(r) => r,
        };
        let bad = |e: &dyn std::fmt::Display| NsError::Malformed(format!("invalid filters: {e}"));
        let v: Value = serde_json::from_str(raw).map_err(|e| bad(&e))?;
        let Value::Object(map) = v else { return Err(bad(&"not a JSON object")) };
        for (k, v) in map {
            let values: Vec<String> = match v {
                Value::Array(a) => a.into_iter().map(|x| x.as_str().map(str::to_owned).ok_or_else(|| bad(&k))).collect::<Result<_, _>>()?,
                Value::Object(o) => o.into_iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(k, _)| k).collect(),
                _ => return Err(bad(&k)),
            };
            // dockerd lower-cases nothing: keys are matched as given.
            out.entry(k).or_insert_with(Vec::new).extend(values);
        }
        Ok(Filters(out))
    }

    pub fn take(&mut self, key: &str) -> Vec<String> {
        self.0.remove(key).unwrap_or_default()
    }

    pub fn add(&mut self, key: &str, value: String) {
        self.0.entry(key.to_owned()).or_default().push(value);
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }
}

/// A name filter as dockerd applies it: Go regular expressions, any of which may match.
pub struct NameMatch(Vec<regex::Regex>);

impl NameMatch {
    pub fn new(patterns: &[String]) -> Result<NameMatch, NsError> {
        let res = patterns.iter().map(|p| regex::Regex::new(p).map_err(|e| NsError::Malformed(format!("invalid filter 'name={p}': {e}"))));
        Ok(NameMatch(res.collect::<Result<_, _>>()?))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms() {
        let f = Filters::parse(Some(r#"{"label":{"a=b":true,"c":false},"name":["x"]}"#)).unwrap();
        assert_eq!(f.0["label"], ["a=b"]);
        assert_eq!(f.0["name"], ["x"]);
        assert!(Filters::parse(Some("[1]")).is_err());
        assert!(Filters::parse(None).unwrap().0.is_empty());
    }
}
