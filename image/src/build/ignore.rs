//! `.dockerignore`: patterns matched against context-relative paths, `*`, `?`, `**`, and
//! `!` exceptions, the last matching pattern deciding (Docker's rules).

/// Compiled `.dockerignore` patterns.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (negate, p) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let parts: Vec<String> = p
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if !parts.is_empty() {
                patterns.push((negate, parts));
            }
        }
        Ignore { patterns }
    }

    /// Whether `rel` (a `/`-separated context path) is excluded. A directory excluded by a
    /// pattern excludes what is under it, unless an exception names something there.
    pub fn excluded(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut excluded = false;
        for (negate, pat) in &self.patterns {
            // A pattern matching the path or one of its parent directories.
            let hit = (1..=comps.len()).any(|n| match_parts(pat, &comps[..n]));
            if hit {
                excluded = !negate;
            }
        }
        excluded
    }

    /// Whether some exception could re-include something under directory `rel` (then
    /// the directory must be walked even if excluded).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(n, _)| *n)
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            match_parts(&pat[1..], path) || (!path.is_empty() && match_parts(pat, &path[1..]))
        }
        (Some(p), Some(c)) => {
            glob(p.as_bytes(), c.as_bytes()) && match_parts(&pat[1..], &path[1..])
        }
        _ => false,
    }
}

/// Matches one path component against `*`, `?` and `[...]`-free glob text.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(b'\\'), Some(c)) if p.len() > 1 && p[1] == *c => glob(&p[2..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules() {
        let ig = Ignore::parse(
            "# comment\n*.log\ntarget\n**/secret*\n!keep.log\ndocs/*.md\n!docs/README.md\n",
        );
        assert!(ig.excluded("a.log"));
        assert!(!ig.excluded("keep.log"));
        assert!(
            !ig.excluded("sub/a.log"),
            "*.log is anchored at the context root"
        );
        assert!(ig.excluded("target/debug/x"));
        assert!(ig.excluded("deep/dir/secret.txt"));
        assert!(ig.excluded("secret"));
        assert!(ig.excluded("docs/guide.md"));
        assert!(!ig.excluded("docs/README.md"));
        assert!(!ig.excluded("src/main.rs"));
        assert!(ig.has_exceptions());
    }
}
