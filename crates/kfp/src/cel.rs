//! The subset of CEL that the kfp compiler writes in `triggerPolicy.condition` for `dsl.If`,
//! `dsl.Elif` and `dsl.Else`, translated to a capstan condition.
//!
//! The compiler writes comparisons of the task's inputs with literals, joined by `&&`, `||` and
//! `!( )`: `inputs.parameter_values['pipelinechannel--flip-Output'] == 'heads'`, and for numbers
//! `int(inputs.parameter_values['x']) > 5` or `double(...)`. capstan's condition language has
//! the same operators, literals and parentheses, so only the operands change: an input becomes
//! the reference it is bound to, and the casts are dropped (capstan compares numbers by value).

/// Translates `condition`. `input` turns an input name into capstan condition text (a
/// `{{ ref }}` or a literal), or an error message.
pub(crate) fn translate(
    condition: &str,
    mut input: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    const OPERAND: &str = "inputs.parameter_values[";
    let mut out = String::with_capacity(condition.len());
    let mut rest = condition;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(OPERAND) {
            let (name, tail) = quoted(after)
                .ok_or_else(|| format!("cannot read the input name in `{condition}`"))?;
            let tail = tail
                .trim_start()
                .strip_prefix(']')
                .ok_or_else(|| format!("expected `]` after input `{name}` in `{condition}`"))?;
            out.push_str(&input(&name)?);
            rest = tail;
            continue;
        }
        if let Some(after) = ["int(", "double(", "string(", "bool("]
            .iter()
            .find_map(|cast| rest.strip_prefix(cast))
            .filter(|_| !out.ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        {
            out.push('(');
            rest = after;
            continue;
        }
        if rest.starts_with(['\'', '"']) {
            let (text, tail) =
                quoted(rest).ok_or_else(|| format!("unclosed string in `{condition}`"))?;
            out.push_str(&serde_json::Value::String(text).to_string());
            rest = tail;
            continue;
        }
        let c = rest.chars().next().expect("rest is not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

/// A quoted string at the start of `s` (single or double quotes, backslash escapes), and the text
/// after it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut text = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?.1),
            c if c == quote => return Some((text, &s[i + 1..])),
            c => text.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(c: &str) -> Result<String, String> {
        translate(c, |name| Ok(format!("{{{{ inputs.{name} }}}}")))
    }

    #[test]
    fn translates_the_compilers_conditions() {
        assert_eq!(
            tr("inputs.parameter_values['pipelinechannel--flip-Output'] == 'heads'").unwrap(),
            r#"{{ inputs.pipelinechannel--flip-Output }} == "heads""#
        );
        assert_eq!(
            tr("!(inputs.parameter_values['a'] == 'x') && int(inputs.parameter_values['n']) > 5")
                .unwrap(),
            r#"!({{ inputs.a }} == "x") && ({{ inputs.n }}) > 5"#
        );
        assert_eq!(
            tr(r#"inputs.parameter_values["s"] != "it's""#).unwrap(),
            r#"{{ inputs.s }} != "it's""#
        );
    }

    #[test]
    fn reports_malformed_operands() {
        assert!(tr("inputs.parameter_values[x] == 1").is_err());
        assert!(tr("inputs.parameter_values['x' == 1").is_err());
        assert!(tr("inputs.parameter_values['x'] == 'open").is_err());
        let err = translate("inputs.parameter_values['x'] == 1", |n| {
            Err(format!("unknown input `{n}`"))
        })
        .unwrap_err();
        assert_eq!(err, "unknown input `x`");
    }
}
