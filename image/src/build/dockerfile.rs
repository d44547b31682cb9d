//! Dockerfile parsing: logical lines (`\` continuations, comments), instructions with
//! their line numbers, JSON and shell forms, `key=value` lists, and variable substitution
//! (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}`).

use std::collections::BTreeMap;

/// One instruction and the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Line number of the instruction's first line.
    pub line: usize,
    /// The keyword, uppercased (`FROM`, `COPY`, ...).
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined.
    pub args: String,
}

/// A parse error: the line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Splits a Dockerfile into instructions.
pub fn parse(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        // Comments and blank lines (also inside continuations, as Docker allows).
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        match &mut current {
            Some((_, acc)) => {
                acc.push(' ');
                acc.push_str(body.trim());
            }
            None => current = Some((line_no, body.trim().to_string())),
        }
        if !continues {
            let (line, text) = current.take().expect("set above");
            out.push(split_instruction(line, &text)?);
        }
    }
    if let Some((line, text)) = current {
        out.push(split_instruction(line, &text)?);
    }
    Ok(out)
}

fn split_instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let (kw, args) = match text.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim()),
        None => (text, ""),
    };
    if kw.is_empty() || !kw.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ParseError {
            line,
            reason: format!("expected an instruction, found {text:?}"),
        });
    }
    Ok(Instruction {
        line,
        keyword: kw.to_ascii_uppercase(),
        args: args.to_string(),
    })
}

/// The JSON (exec) form `["a", "b"]`, if `args` is one.
pub fn json_array(args: &str) -> Option<Vec<String>> {
    let t = args.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// Splits on unquoted whitespace, removing quotes and backslash escapes (Docker's word
/// splitting for COPY sources, LABEL/ENV pairs, EXPOSE).
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// `key=value` pairs (ENV, LABEL, ARG); the legacy `KEY value` form when `legacy` and no
/// `=` appears in the first word.
pub fn pairs(args: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let first = args.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let rest = args.trim()[first.len()..].trim();
        if rest.is_empty() {
            return Err(format!("{first} needs a value"));
        }
        let value = words(rest).join(" ");
        return Ok(vec![(first.to_string(), value)]);
    }
    words(args)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("expected key=value, found {w:?}")),
        })
        .collect()
}

/// Substitutes variables from `vars`. Unknown variables become empty, as in Docker.
/// `\$` is a literal dollar sign.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '\\' if i + 1 < b.len() && b[i + 1] == '$' => {
                out.push('$');
                i += 2;
            }
            '$' if i + 1 < b.len() && b[i + 1] == '{' => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("unterminated ${")?
                    + i;
                let inner: String = b[i + 2..end].iter().collect();
                let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                    Some(p) => (&inner[..p], Some((&inner[p..p + 2], &inner[p + 2..]))),
                    None => (inner.as_str(), None),
                };
                if !valid_name(name) {
                    return Err(format!("bad variable name in ${{{inner}}}"));
                }
                let val = vars.get(name).filter(|v| !v.is_empty());
                match op {
                    None => out.push_str(val.map_or("", String::as_str)),
                    Some((":-", word)) => match val {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&expand(word, vars)?),
                    },
                    Some((_, word)) => {
                        if val.is_some() {
                            out.push_str(&expand(word, vars)?);
                        }
                    }
                }
                i = end + 1;
            }
            '$' if i + 1 < b.len() && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == '_') => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_') {
                    j += 1;
                }
                let name: String = b[i + 1..j].iter().collect();
                out.push_str(vars.get(&name).map_or("", String::as_str));
                i = j;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_continuations_and_comments() {
        let df = "# syntax comment\nFROM scratch\n\nenv A=1 \\\n  # inside\n  B=2\nCMD [\"sh\"]\nLABEL x=y \\";
        let ins = parse(df).unwrap();
        let kw: Vec<_> = ins
            .iter()
            .map(|i| (i.line, i.keyword.as_str(), i.args.as_str()))
            .collect();
        assert_eq!(
            kw,
            [
                (2, "FROM", "scratch"),
                (4, "ENV", "A=1 B=2"),
                (7, "CMD", "[\"sh\"]"),
                (8, "LABEL", "x=y")
            ]
        );
        assert_eq!(parse("FROM x\n-bad").unwrap_err().line, 2);
    }

    #[test]
    fn forms_and_pairs() {
        assert_eq!(
            json_array(r#"["a", "b c"]"#),
            Some(vec!["a".into(), "b c".into()])
        );
        assert_eq!(json_array("echo hi"), None);
        assert_eq!(words(r#"a "b c" 'd e' f\ g"#), ["a", "b c", "d e", "f g"]);
        assert_eq!(
            pairs(r#"A=1 B="two words" C="#, false).unwrap(),
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "".into())
            ]
        );
        assert_eq!(
            pairs("NAME some value", true).unwrap(),
            [("NAME".into(), "some value".into())]
        );
        assert!(pairs("NOVALUE", true).is_err());
        assert!(pairs("=x", false).is_err());
    }

    #[test]
    fn substitution() {
        let vars: BTreeMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("E".to_string(), String::new()),
        ]
        .into();
        assert_eq!(
            expand(
                "$A-${A}-${B:-d}-${A:+set}-${E:-empty}-${B:+no}-\\$A-$",
                &vars
            )
            .unwrap(),
            "1-1-d-set-empty--$A-$"
        );
        assert!(expand("${A", &vars).is_err());
        assert!(expand("${1x}", &vars).is_err());
    }
}
