//! Label expressions through the public API: random trees survive printing
//! and parsing, and evaluation agrees with two independent evaluators.

use std::collections::BTreeSet;

use hodei_domain::label::LabelExpr;
use proptest::prelude::*;

/// Labels, including ones that must be quoted or that end in `-`.
const ATOMS: &[&str] = &[
    "linux",
    "java-17",
    "a-",
    "-",
    "32bit.dot",
    "x=y",
    "two words",
    "q\"uote",
    "",
    "tab\there",
    "ñ",
];

fn atom() -> impl Strategy<Value = LabelExpr> {
    prop::sample::select(ATOMS).prop_map(LabelExpr::atom)
}

fn expr() -> impl Strategy<Value = LabelExpr> {
    atom().prop_recursive(6, 48, 2, |inner| {
        let pair = (inner.clone(), inner.clone());
        prop_oneof![
            inner.prop_map(|e| LabelExpr::Not(Box::new(e))),
            pair.clone()
                .prop_map(|(l, r)| LabelExpr::And(Box::new(l), Box::new(r))),
            pair.clone()
                .prop_map(|(l, r)| LabelExpr::Or(Box::new(l), Box::new(r))),
            pair.clone()
                .prop_map(|(l, r)| LabelExpr::Implies(Box::new(l), Box::new(r))),
            pair.prop_map(|(l, r)| LabelExpr::Iff(Box::new(l), Box::new(r))),
        ]
    })
}

fn labels() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(
        prop::sample::select(ATOMS).prop_map(str::to_owned),
        0..ATOMS.len(),
    )
}

/// Truth tables indexed by `[left as usize][right as usize]`.
const AND: [[bool; 2]; 2] = [[false, false], [false, true]];
const OR: [[bool; 2]; 2] = [[false, true], [true, true]];
const IMPLIES: [[bool; 2]; 2] = [[true, true], [false, true]];
const IFF: [[bool; 2]; 2] = [[true, false], [false, true]];

/// The textbook truth tables, applied to the tree.
fn reference(e: &LabelExpr, labels: &BTreeSet<String>) -> bool {
    let table = |t: [[bool; 2]; 2], l: &LabelExpr, r: &LabelExpr| {
        t[usize::from(reference(l, labels))][usize::from(reference(r, labels))]
    };
    match e {
        LabelExpr::Atom(a) => labels.contains(a),
        LabelExpr::Not(x) => !reference(x, labels),
        LabelExpr::And(l, r) => table(AND, l, r),
        LabelExpr::Or(l, r) => table(OR, l, r),
        LabelExpr::Implies(l, r) => table(IMPLIES, l, r),
        LabelExpr::Iff(l, r) => table(IFF, l, r),
    }
}

/// Prints with every operation parenthesised, so the text has a single
/// reading whatever the precedence rules are.
fn fully_parenthesised(e: &LabelExpr) -> String {
    let bin = |l: &LabelExpr, op: &str, r: &LabelExpr| {
        format!(
            "({} {op} {})",
            fully_parenthesised(l),
            fully_parenthesised(r)
        )
    };
    match e {
        LabelExpr::Atom(_) => e.to_string(),
        LabelExpr::Not(x) => format!("!({})", fully_parenthesised(x)),
        LabelExpr::And(l, r) => bin(l, "&&", r),
        LabelExpr::Or(l, r) => bin(l, "||", r),
        LabelExpr::Implies(l, r) => bin(l, "->", r),
        LabelExpr::Iff(l, r) => bin(l, "<->", r),
    }
}

/// An evaluator that never builds a tree: it reads the canonical text with
/// an operator-precedence (shunting-yard) algorithm. Binding, loosest
/// first: `<->` (left), `->`, `||` (left), `&&` (left), `!` (prefix).
/// Atoms are bare runs or double-quoted strings with escapes.
fn shunting_yard(text: &str, labels: &BTreeSet<String>) -> bool {
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Op {
        Iff,
        Implies,
        Or,
        And,
        Not,
        Open,
    }
    fn prec(op: Op) -> u8 {
        match op {
            Op::Iff => 1,
            Op::Implies => 2,
            Op::Or => 3,
            Op::And => 4,
            Op::Not => 5,
            Op::Open => 0,
        }
    }
    fn apply(op: Op, values: &mut Vec<bool>) {
        if op == Op::Not {
            let v = values.pop().expect("operand");
            values.push(!v);
            return;
        }
        let r = values.pop().expect("right operand");
        let l = values.pop().expect("left operand");
        values.push(match op {
            Op::Iff => l == r,
            Op::Implies => !l || r,
            Op::Or => l || r,
            Op::And => l && r,
            Op::Not | Op::Open => unreachable!(),
        });
    }
    let chars: Vec<char> = text.chars().collect();
    let mut values: Vec<bool> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().take(3).collect();
        let binary = if rest.starts_with("<->") {
            Some((Op::Iff, 3))
        } else if rest.starts_with("->") {
            Some((Op::Implies, 2))
        } else if rest.starts_with("||") {
            Some((Op::Or, 2))
        } else if rest.starts_with("&&") {
            Some((Op::And, 2))
        } else {
            None
        };
        if let Some((op, len)) = binary {
            // Left-associative: pop operators that bind at least as tight.
            while let Some(&top) = ops.last() {
                if top != Op::Open && prec(top) >= prec(op) {
                    apply(ops.pop().expect("top"), &mut values);
                } else {
                    break;
                }
            }
            ops.push(op);
            i += len;
            continue;
        }
        match chars[i] {
            ' ' => i += 1,
            '!' => {
                ops.push(Op::Not);
                i += 1;
            }
            '(' => {
                ops.push(Op::Open);
                i += 1;
            }
            ')' => {
                while let Some(op) = ops.pop() {
                    if op == Op::Open {
                        break;
                    }
                    apply(op, &mut values);
                }
                i += 1;
                // A `!` before the group applies now.
                while ops.last() == Some(&Op::Not) {
                    apply(ops.pop().expect("not"), &mut values);
                }
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                        s.push(match chars[i] {
                            't' => '\t',
                            'n' => '\n',
                            'r' => '\r',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            c => c,
                        });
                    } else {
                        s.push(chars[i]);
                    }
                    i += 1;
                }
                i += 1;
                values.push(labels.contains(&s));
                while ops.last() == Some(&Op::Not) {
                    apply(ops.pop().expect("not"), &mut values);
                }
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !matches!(chars[i], ' ' | '(' | ')' | '!' | '&' | '|' | '<' | '"')
                    && !(chars[i] == '-' && chars.get(i + 1) == Some(&'>'))
                {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                values.push(labels.contains(&s));
                while ops.last() == Some(&Op::Not) {
                    apply(ops.pop().expect("not"), &mut values);
                }
            }
        }
    }
    while let Some(op) = ops.pop() {
        apply(op, &mut values);
    }
    assert_eq!(values.len(), 1, "{text}");
    values[0]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn printing_then_parsing_gives_the_same_tree(e in expr()) {
        let printed = e.to_string();
        prop_assert_eq!(LabelExpr::parse(&printed), Ok(e.clone()), "printed as {}", printed);
        let explicit = fully_parenthesised(&e);
        prop_assert_eq!(LabelExpr::parse(&explicit), Ok(e), "fully parenthesised {}", explicit);
    }

    #[test]
    fn evaluation_agrees_with_reference_evaluators(e in expr(), labels in labels()) {
        let got = e.matches(&labels);
        prop_assert_eq!(got, reference(&e, &labels));
        prop_assert_eq!(got, shunting_yard(&e.to_string(), &labels), "text {}", e);
    }

    #[test]
    fn explanations_decide_the_result(e in expr(), labels in labels()) {
        // Evaluating with only the explained labels fixed (every other label
        // flipped to the opposite of the real set) gives the same answer.
        let facts = e.explain(&labels);
        let decided = |label: &str| match facts.iter().find(|f| f.label == label) {
            Some(f) => f.present,
            None => !labels.contains(label),
        };
        prop_assert_eq!(e.matches_with(&decided), e.matches(&labels));
    }

    #[test]
    fn any_input_parses_or_fails_with_a_column_inside_it(
        input in "[a-c&|!<>()\" '\\\\-]{0,24}"
    ) {
        match LabelExpr::parse(&input) {
            Ok(e) => prop_assert_eq!(LabelExpr::parse(&e.to_string()), Ok(e)),
            Err(err) => {
                let len = input.chars().count();
                prop_assert!((1..=len + 1).contains(&err.column), "{} for {:?}", err, input);
                prop_assert!(!err.message.is_empty());
            }
        }
    }
}

/// DESIGN.md's examples, through the public API.
#[test]
fn design_examples() {
    let check = |input: &str, printed: Result<&str, &str>| {
        let got = LabelExpr::parse(input)
            .map(|e| e.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(
            got,
            printed.map(str::to_owned).map_err(str::to_owned),
            "{input:?}"
        );
    };
    check("java-11", Ok("java-11"));
    check("32bit.dot", Ok("32bit.dot"));
    check("solaris-x86", Ok("solaris-x86"));
    check("a->b", Ok("a -> b"));
    check("a-->b", Ok("a- -> b"));
    check("\"quoted \\\"atom\\\"\"", Ok("\"quoted \\\"atom\\\"\""));
    check("(a)||!b&&c->d<->e", Ok("a || !b && c -> d <-> e"));
    check(
        "foo bar",
        Err(
            "column 5: expected '&&', '||', '->', '<->' or the end of the expression, found label \"bar\"",
        ),
    );
    check(
        "foo (bar)",
        Err("column 5: expected '&&', '||', '->', '<->' or the end of the expression, found '('"),
    );
    check("a <- b", Err("column 3: expected '<->', found '<-'"));
    check(
        "->",
        Err("column 1: expected a label, '!' or '(', found '->'"),
    );
}
