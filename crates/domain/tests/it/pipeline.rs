//! The pipeline parser, validator and planner, through the public API.
//!
//! Constructs are checked in both spellings (`sh 'x'` and `sh("x")`) through
//! one helper each; every validation error is checked with its exact message
//! and position.

use hodei_domain::pipeline::{
    Agent, AgentKind, Comparator, ConditionKind, Duration, EnvValue, Interpolation, Options, Part,
    Pipeline, PlanBody, PostCondition, SegmentOwner, StageBody, StepKind, TimeUnit, parse, plan,
};
use hodei_domain::{LabelExpr, TemplateId};

/// Lints `source`; `Ok(pipeline)` or every diagnostic as `LINE:COL: message`.
fn lint(source: &str) -> Result<Pipeline, Vec<String>> {
    let parsed = parse("Jenkinsfile", source);
    match parsed.pipeline {
        Some(p) if parsed.diagnostics.is_empty() => Ok(p),
        _ => Err(parsed.diagnostics.iter().map(|d| d.to_string()).collect()),
    }
}

/// A pipeline whose only stage `s` has `steps` on line 6, column 1.
fn in_steps(steps: &str) -> String {
    format!(
        "pipeline {{\n  agent any\n  stages {{\n    stage('s') {{\n      steps {{\n{steps}\n      }}\n    }}\n  }}\n}}\n"
    )
}

/// A pipeline whose stage `s` has `section` from line 5, column 1.
fn in_stage(section: &str) -> String {
    format!(
        "pipeline {{\n  agent any\n  stages {{\n    stage('s') {{\n{section}\n    }}\n  }}\n}}\n"
    )
}

/// A pipeline with `agent` on line 2, column 1.
fn with_agent(agent: &str) -> String {
    format!(
        "pipeline {{\n{agent}\n  stages {{\n    stage('s') {{\n      steps {{ sh 'x' }}\n    }}\n  }}\n}}\n"
    )
}

/// A pipeline with `section` from line 3, column 1, after `agent any`.
fn in_pipeline(section: &str) -> String {
    format!(
        "pipeline {{\n  agent any\n{section}\n  stages {{\n    stage('s') {{\n      steps {{ sh 'x' }}\n    }}\n  }}\n}}\n"
    )
}

fn text(s: &str) -> Interpolation {
    Interpolation::literal(s)
}

fn sh(script: &str) -> StepKind {
    StepKind::Sh {
        script: text(script),
        label: None,
        return_status: false,
    }
}

/// Parses `steps` inside a stage and compares the steps.
fn check_steps(steps: &str, expected: &[StepKind]) {
    let pipeline = lint(&in_steps(steps)).unwrap_or_else(|e| panic!("{steps}: {e:?}"));
    let StageBody::Steps(found) = &pipeline.stages[0].body else {
        panic!("{steps}: not a steps stage");
    };
    let kinds: Vec<&StepKind> = found.iter().map(|s| &s.kind).collect();
    let expected: Vec<&StepKind> = expected.iter().collect();
    assert_eq!(kinds, expected, "{steps}");
}

/// Lints `source` and compares every diagnostic.
fn check_errors(source: &str, expected: &[&str]) {
    let found = match lint(source) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    };
    assert_eq!(found, expected, "{source}");
}

#[test]
fn steps_in_both_spellings() {
    let cases: Vec<(&str, Vec<StepKind>)> = vec![
        ("sh 'make'", vec![sh("make")]),
        ("sh('make')", vec![sh("make")]),
        ("sh \"make\"", vec![sh("make")]),
        ("sh(\"make\")", vec![sh("make")]),
        ("sh script: 'make'", vec![sh("make")]),
        ("sh(script: 'make')", vec![sh("make")]),
        ("sh '''\nmake\n'''", vec![sh("\nmake\n")]),
        ("sh 'a'; sh 'b'", vec![sh("a"), sh("b")]),
        (
            "sh script: 'make', label: 'Build', returnStatus: true",
            vec![StepKind::Sh {
                script: text("make"),
                label: Some("Build".into()),
                return_status: true,
            }],
        ),
        (
            "sh \"echo $A ${B} ${env.C}\"",
            vec![StepKind::Sh {
                script: Interpolation::from_parts(vec![
                    Part::Literal("echo ".into()),
                    Part::Var("A".into()),
                    Part::Literal(" ".into()),
                    Part::Var("B".into()),
                    Part::Literal(" ".into()),
                    Part::Var("C".into()),
                ]),
                label: None,
                return_status: false,
            }],
        ),
        ("sh 'echo $HOME'", vec![sh("echo $HOME")]),
        ("echo 'hi'", vec![StepKind::Echo(text("hi"))]),
        ("echo(\"hi\")", vec![StepKind::Echo(text("hi"))]),
        ("echo message: 'hi'", vec![StepKind::Echo(text("hi"))]),
        ("error 'boom'", vec![StepKind::Error(text("boom"))]),
        ("error(\"boom\")", vec![StepKind::Error(text("boom"))]),
        (
            "dir('sub') { sh 'x' }",
            vec![StepKind::Dir {
                path: text("sub"),
                steps: vec![],
            }],
        ),
        (
            "withEnv(['A=1', \"B=x${X}\"]) { sh 'x' }",
            vec![StepKind::WithEnv {
                vars: vec![
                    ("A".into(), text("1")),
                    (
                        "B".into(),
                        Interpolation::from_parts(vec![
                            Part::Literal("x".into()),
                            Part::Var("X".into()),
                        ]),
                    ),
                ],
                steps: vec![],
            }],
        ),
        (
            "timeout(time: 5, unit: 'SECONDS') { sh 'x' }",
            vec![StepKind::Timeout {
                limit: Duration {
                    time: 5,
                    unit: TimeUnit::Seconds,
                },
                steps: vec![],
            }],
        ),
        (
            "timeout(5) { sh 'x' }",
            vec![StepKind::Timeout {
                limit: Duration {
                    time: 5,
                    unit: TimeUnit::Minutes,
                },
                steps: vec![],
            }],
        ),
        (
            "retry(3) { sh 'x' }",
            vec![StepKind::Retry {
                count: 3,
                steps: vec![],
            }],
        ),
        (
            "retry(count: 2) { sh 'x' }",
            vec![StepKind::Retry {
                count: 2,
                steps: vec![],
            }],
        ),
        (
            "sleep 5",
            vec![StepKind::Sleep(Duration {
                time: 5,
                unit: TimeUnit::Seconds,
            })],
        ),
        (
            "sleep(time: 2, unit: 'MINUTES')",
            vec![StepKind::Sleep(Duration {
                time: 2,
                unit: TimeUnit::Minutes,
            })],
        ),
        (
            "writeFile file: 'a.txt', text: 'b'",
            vec![StepKind::WriteFile {
                file: text("a.txt"),
                text: text("b"),
            }],
        ),
        (
            "writeFile(file: 'a.txt', text: \"$B\")",
            vec![StepKind::WriteFile {
                file: text("a.txt"),
                text: Interpolation::from_parts(vec![Part::Var("B".into())]),
            }],
        ),
    ];
    for (source, mut expected) in cases {
        // Block steps are compared with their nested `sh 'x'`.
        for kind in &mut expected {
            if let StepKind::Dir { steps, .. }
            | StepKind::WithEnv { steps, .. }
            | StepKind::Timeout { steps, .. }
            | StepKind::Retry { steps, .. } = kind
            {
                let pipeline =
                    lint(&in_steps(source)).unwrap_or_else(|e| panic!("{source}: {e:?}"));
                let StageBody::Steps(found) = &pipeline.stages[0].body else {
                    panic!("not steps");
                };
                *steps = found[0].kind.children().to_vec();
                assert_eq!(steps.len(), 1, "{source}");
                assert_eq!(steps[0].kind, sh("x"), "{source}");
            }
        }
        check_steps(source, &expected);
    }
}

#[test]
fn agents_in_both_spellings() {
    let label = |s: &str| Some(LabelExpr::parse(s).expect("valid label"));
    let cases: Vec<(&str, AgentKind)> = vec![
        ("agent any", AgentKind::Any),
        (
            "agent { label 'linux && java-17' }",
            AgentKind::Label {
                expr: label("linux && java-17"),
                custom_workspace: None,
            },
        ),
        (
            "agent { label(\"linux && java-17\") }",
            AgentKind::Label {
                expr: label("linux && java-17"),
                custom_workspace: None,
            },
        ),
        (
            "agent { label '' }",
            AgentKind::Label {
                expr: None,
                custom_workspace: None,
            },
        ),
        (
            "agent {\n  node {\n    label 'linux'\n    customWorkspace 'ws'\n  }\n}",
            AgentKind::Label {
                expr: label("linux"),
                custom_workspace: Some("ws".into()),
            },
        ),
        (
            "agent { label { label('linux'); customWorkspace('ws') } }",
            AgentKind::Label {
                expr: label("linux"),
                custom_workspace: Some("ws".into()),
            },
        ),
        (
            "agent { node { customWorkspace 'ws' } }",
            AgentKind::Label {
                expr: None,
                custom_workspace: Some("ws".into()),
            },
        ),
        (
            "agent { template 'java-maven' }",
            AgentKind::Template(TemplateId::new("java-maven").expect("valid id")),
        ),
        (
            "agent { template(\"java-maven\") }",
            AgentKind::Template(TemplateId::new("java-maven").expect("valid id")),
        ),
        (
            "agent { docker 'alpine:3' }",
            AgentKind::Docker {
                image: "alpine:3".into(),
                args: None,
            },
        ),
        (
            "agent { docker(\"alpine:3\") }",
            AgentKind::Docker {
                image: "alpine:3".into(),
                args: None,
            },
        ),
        (
            "agent { docker(image: 'alpine:3', args: '-u 0') }",
            AgentKind::Docker {
                image: "alpine:3".into(),
                args: Some("-u 0".into()),
            },
        ),
        (
            "agent {\n  docker {\n    image 'alpine:3'\n    args '-u 0'\n  }\n}",
            AgentKind::Docker {
                image: "alpine:3".into(),
                args: Some("-u 0".into()),
            },
        ),
        (
            "agent { kubernetes { yaml '''\nkind: Pod\n'''\n inheritFrom 'base' } }",
            AgentKind::Kubernetes {
                yaml: Some("\nkind: Pod\n".into()),
                inherit_from: Some("base".into()),
            },
        ),
        (
            "agent { kubernetes { inheritFrom('base') } }",
            AgentKind::Kubernetes {
                yaml: None,
                inherit_from: Some("base".into()),
            },
        ),
    ];
    for (source, expected) in cases {
        let pipeline = lint(&with_agent(source)).unwrap_or_else(|e| panic!("{source}: {e:?}"));
        assert_eq!(pipeline.agent.kind, expected, "{source}");
        assert_eq!((pipeline.agent.pos.line, pipeline.agent.pos.column), (2, 1));
    }
}

#[test]
fn environment_values() {
    let pipeline = lint(&in_pipeline(
        "  environment {\n    A = 'x'\n    B = \"${A}-y\"\n    C = credentials('cred')\n    D = credentials(\"d\")\n    E = 42\n  }",
    ))
    .expect("valid");
    let found: Vec<(&str, &EnvValue, u32)> = pipeline
        .environment
        .iter()
        .map(|e| (e.name.as_str(), &e.value, e.pos.line))
        .collect();
    let b = EnvValue::Text(Interpolation::from_parts(vec![
        Part::Var("A".into()),
        Part::Literal("-y".into()),
    ]));
    assert_eq!(
        found,
        vec![
            ("A", &EnvValue::Text(text("x")), 4),
            ("B", &b, 5),
            ("C", &EnvValue::Credentials("cred".into()), 6),
            ("D", &EnvValue::Credentials("d".into()), 7),
            ("E", &EnvValue::Text(text("42")), 8),
        ]
    );
}

#[test]
fn options_and_their_warnings() {
    let parsed = parse(
        "Jenkinsfile",
        &in_pipeline(
            "  options {\n    timeout(time: 1, unit: 'HOURS')\n    retry(3)\n    skipDefaultCheckout()\n    parallelsAlwaysFailFast()\n    timestamps()\n    buildDiscarder(logRotator(numToKeepStr: '10'))\n  }",
        ),
    );
    let warnings: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "8:5: warning: option `timestamps` has no effect in Hodei and is ignored",
            "9:5: warning: option `buildDiscarder` has no effect in Hodei and is ignored",
        ]
    );
    let pipeline = parsed.pipeline.expect("warnings do not stop a pipeline");
    assert_eq!(
        pipeline.options,
        Options {
            timeout: Some(Duration {
                time: 1,
                unit: TimeUnit::Hours
            }),
            retry: Some(3),
            skip_default_checkout: true,
            parallels_always_fail_fast: true,
        }
    );
    let stage = lint(&in_stage(
        "      options { timeout(10); retry 2; skipDefaultCheckout(false) }\n      steps { sh 'x' }",
    ))
    .expect("valid");
    assert_eq!(
        stage.stages[0].options,
        Options {
            timeout: Some(Duration {
                time: 10,
                unit: TimeUnit::Minutes
            }),
            retry: Some(2),
            skip_default_checkout: false,
            parallels_always_fail_fast: false,
        }
    );
}

#[test]
fn when_conditions_in_both_spellings() {
    let branch = |pattern: &str, comparator| ConditionKind::Branch {
        pattern: pattern.into(),
        comparator,
    };
    let cases: Vec<(&str, Vec<ConditionKind>, bool)> = vec![
        (
            "branch 'main'",
            vec![branch("main", Comparator::Glob)],
            false,
        ),
        (
            "branch('main')",
            vec![branch("main", Comparator::Glob)],
            false,
        ),
        (
            "branch pattern: 'release-\\\\d+', comparator: 'REGEXP'",
            vec![branch("release-\\d+", Comparator::Regexp)],
            false,
        ),
        (
            "branch(pattern: 'main', comparator: 'EQUALS')",
            vec![branch("main", Comparator::Equals)],
            false,
        ),
        (
            "environment name: 'DEPLOY', value: 'yes'",
            vec![ConditionKind::Environment {
                name: "DEPLOY".into(),
                value: "yes".into(),
            }],
            false,
        ),
        (
            "beforeAgent true\nbranch 'a'",
            vec![branch("a", Comparator::Glob)],
            true,
        ),
        (
            "branch 'a'\nbranch 'b'",
            vec![branch("a", Comparator::Glob), branch("b", Comparator::Glob)],
            false,
        ),
    ];
    for (source, expected, before_agent) in cases {
        let pipeline = lint(&in_stage(&format!(
            "when {{\n{source}\n}}\nsteps {{ sh 'x' }}"
        )))
        .unwrap_or_else(|e| panic!("{source}: {e:?}"));
        let when = pipeline.stages[0].when.as_ref().expect("when");
        let kinds: Vec<ConditionKind> = when.conditions.iter().map(|c| c.kind.clone()).collect();
        assert_eq!(kinds, expected, "{source}");
        assert_eq!(when.before_agent, before_agent, "{source}");
    }
    let nested = lint(&in_stage(
        "when {\n  anyOf {\n    not { branch 'a' }\n    allOf { branch 'b'; environment(name: 'X', value: '1') }\n  }\n}\nsteps { sh 'x' }",
    ))
    .expect("valid");
    let when = nested.stages[0].when.as_ref().expect("when");
    let ConditionKind::AnyOf(any) = &when.conditions[0].kind else {
        panic!("anyOf");
    };
    assert!(
        matches!(&any[0].kind, ConditionKind::Not(inner) if inner.kind == branch("a", Comparator::Glob))
    );
    assert!(matches!(&any[1].kind, ConditionKind::AllOf(all) if all.len() == 2));
    assert_eq!((any[1].pos.line, any[1].pos.column), (8, 5));
}

#[test]
fn every_post_condition_runs_in_jenkins_order() {
    let all = PostCondition::ALL
        .iter()
        .rev()
        .map(|(name, _)| format!("    {name} {{ echo '{name}' }}"))
        .collect::<Vec<_>>()
        .join("\n");
    let pipeline = lint(&in_pipeline(&format!("  post {{\n{all}\n  }}"))).expect("valid");
    let found: Vec<PostCondition> = pipeline.post.iter().map(|b| b.condition).collect();
    let expected: Vec<PostCondition> = PostCondition::ALL.iter().map(|(_, c)| *c).collect();
    assert_eq!(found, expected);
    let stage = lint(&in_stage("steps { sh 'x' }\npost { failure { sh 'y' } }")).expect("valid");
    assert_eq!(stage.stages[0].post[0].condition, PostCondition::Failure);
    assert_eq!(stage.stages[0].post[0].steps[0].kind, sh("y"));
}

/// Agent, owner, parent, parallel branch and stages of a segment.
type SegmentSummary = (
    String,
    SegmentOwner,
    Option<usize>,
    Option<String>,
    Vec<String>,
);

#[test]
fn nested_and_parallel_stages() {
    let source = "pipeline {
  agent none
  options { parallelsAlwaysFailFast() }
  stages {
    stage('Outer') {
      agent { label 'linux' }
      stages {
        stage('A') { steps { sh 'a' } }
        stage('B') {
          agent { template 'go-build' }
          steps { sh 'b' }
        }
        stage('C') { steps { sh 'c' } }
      }
    }
    stage('Fan out') {
      failFast false
      parallel {
        stage('P1') {
          agent { docker 'alpine' }
          steps { sh 'p1' }
        }
        stage('P2') {
          agent any
          stages {
            stage('P2a') { steps { sh 'p2a' } }
            stage('P2b') { steps { echo 'p2b' } }
          }
        }
      }
    }
    stage('Note') { steps { echo 'no worker needed' } }
  }
}
";
    let pipeline = lint(source).expect("valid");
    let plan = plan(&pipeline).expect("plannable");
    let summary: Vec<SegmentSummary> = plan
        .segments
        .iter()
        .map(|s| {
            (
                s.agent.kind.to_string(),
                s.owner.clone(),
                s.parent.map(|p| p.0),
                s.parallel_branch.clone(),
                s.stages.clone(),
            )
        })
        .collect();
    let owner = |s: &str| SegmentOwner::Stage(s.into());
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        summary,
        vec![
            (
                "label 'linux'".into(),
                owner("Outer"),
                None,
                None,
                names(&["A", "C"])
            ),
            (
                "template 'go-build'".into(),
                owner("B"),
                Some(0),
                None,
                names(&["B"])
            ),
            (
                "docker 'alpine'".into(),
                owner("P1"),
                None,
                Some("P1".into()),
                names(&["P1"])
            ),
            (
                "any".into(),
                owner("P2"),
                None,
                Some("P2".into()),
                names(&["P2a", "P2b"])
            ),
        ]
    );
    assert_eq!(plan.top, None);
    assert!(matches!(
        &plan.stages[1].body,
        PlanBody::Parallel { fail_fast: true, branches } if branches.len() == 2
    ));
    assert_eq!(plan.stages[2].segment, None);
    let PlanBody::Sequential(outer) = &plan.stages[0].body else {
        panic!("sequential");
    };
    assert_eq!(outer[1].segment.map(|s| s.0), Some(1));
    assert_eq!(outer[2].segment.map(|s| s.0), Some(0));
}

#[test]
fn validation_errors_with_positions() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        // Required sections.
        (
            "pipeline {\n  stages { stage('s') { steps { sh 'x' } } }\n}".into(),
            vec!["1:1: missing required section `agent` in `pipeline`: expected `agent any`, `agent none` or `agent { ... }`"],
        ),
        (
            "pipeline {\n  agent any\n}".into(),
            vec!["1:1: missing required section `stages` in `pipeline`: expected `stages { stage('name') { ... } }`"],
        ),
        ("".into(), vec!["1:1: no `pipeline { ... }` block: expected a declarative pipeline"]),
        (
            "node {\n  sh 'x'\n}".into(),
            vec!["1:1: unsupported scripted pipeline `node { ... }`: expected a declarative `pipeline { ... }`"],
        ),
        // Empty blocks.
        (
            "pipeline {\n  agent any\n  stages {\n  }\n}".into(),
            vec!["3:3: `stages` is empty: expected at least one `stage`"],
        ),
        (in_stage("      steps {\n      }"), vec!["5:7: `steps` is empty: expected at least one step"]),
        (
            in_stage("      parallel { }"),
            vec!["5:7: `parallel` is empty: expected at least one `stage`"],
        ),
        (
            in_pipeline("  environment { }"),
            vec!["3:3: `environment` is empty: expected at least one `NAME = value`"],
        ),
        (
            in_pipeline("  post { }"),
            vec!["3:3: `post` is empty: expected at least one condition such as `always { ... }`"],
        ),
        (
            in_stage("      when { }\n      steps { sh 'x' }"),
            vec!["5:7: `when` is empty: expected at least one condition (branch, environment, not, allOf or anyOf)"],
        ),
        (
            with_agent("  agent { }"),
            vec!["2:3: `agent` is empty: expected an agent type (any, none, label, node, template, docker or kubernetes)"],
        ),
        // Duplicates.
        (
            "pipeline {\n  agent any\n  stages {\n    stage('a') { steps { sh 'x' } }\n    stage('a') { steps { sh 'y' } }\n  }\n}".into(),
            vec!["5:5: duplicate stage name `a` (first at 4:5)"],
        ),
        (
            in_pipeline("  environment { A = 'x' }\n  environment { B = 'y' }"),
            vec!["4:3: duplicate section `environment` in `pipeline` (first at 3:3)"],
        ),
        (
            in_pipeline("  agent none"),
            vec!["3:3: duplicate section `agent` in `pipeline` (first at 2:3)"],
        ),
        (
            in_stage("      steps { sh 'x' }\n      steps { sh 'y' }"),
            vec!["6:7: duplicate section `steps` in stage `s` (first at 5:7)"],
        ),
        (
            in_pipeline("  post {\n    always { echo 'a' }\n    always { echo 'b' }\n  }"),
            vec!["5:5: duplicate post condition `always` (first at 4:5)"],
        ),
        (
            in_pipeline("  environment {\n    A = 'x'\n    A = 'y'\n  }"),
            vec!["5:5: duplicate environment variable `A` (first at 4:5)"],
        ),
        // Stage bodies.
        (
            in_stage("      steps { sh 'x' }\n      parallel { stage('p') { steps { sh 'y' } } }"),
            vec!["6:7: stage `s` has both `steps` and `parallel`: expected exactly one of `steps`, `stages` or `parallel`"],
        ),
        (
            in_stage("      steps { sh 'x' }\n      stages { stage('n') { steps { sh 'y' } } }"),
            vec!["6:7: stage `s` has both `steps` and `stages`: expected exactly one of `steps`, `stages` or `parallel`"],
        ),
        (
            in_stage("      environment { A = 'x' }"),
            vec!["4:5: stage `s` has no `steps`, `stages` or `parallel`: expected exactly one of them"],
        ),
        (
            "pipeline {\n  agent any\n  stages {\n    stage {\n      steps { sh 'x' }\n    }\n  }\n}".into(),
            vec!["4:5: `stage` needs a name: expected `stage('name') { ... }`"],
        ),
        (
            in_steps("stage('inner') { steps { sh 'x' } }"),
            vec!["6:1: `stage` is not allowed inside `steps`: stages go in `stages { ... }` or `parallel { ... }`"],
        ),
        (
            in_stage("      failFast true\n      steps { sh 'x' }"),
            vec!["5:7: `failFast` is only allowed in a stage with `parallel`"],
        ),
        (
            in_stage("      parallel {\n        stage('p') {\n          parallel { stage('q') { steps { sh 'x' } } }\n        }\n      }"),
            vec!["7:11: stage `p` is inside a parallel branch and cannot contain `parallel`"],
        ),
        // Unknown names.
        (
            in_pipeline("  colors { }"),
            vec!["3:3: unknown section `colors` in `pipeline`: expected agent, environment, options, stages or post"],
        ),
        (
            in_stage("      colors { }\n      steps { sh 'x' }"),
            vec!["5:7: unknown section `colors` in stage `s`: expected agent, environment, options, when, steps, stages, parallel, post or failFast"],
        ),
        (
            in_pipeline("  tools { maven 'm3' }"),
            vec!["3:3: unsupported section `tools`: Hodei does not run it"],
        ),
        (
            with_agent("  agent { vm 'big' }"),
            vec!["2:11: unknown agent type `vm`: expected any, none, label, node, template, docker or kubernetes"],
        ),
        (
            with_agent("  agent {\n    docker {\n      image 'a'\n      args '-e A=1 --privileged'\n    }\n  }"),
            vec!["5:20: invalid docker args: unsupported docker argument `--privileged`: expected -e, -v, --memory, --cpus or -u"],
        ),
        (
            with_agent("  agent { docker(image: 'a', args: '--memory lots') }"),
            vec!["2:46: invalid docker args: --memory `lots`: expected a whole number with an optional unit b, k, m or g (e.g. 512m)"],
        ),
        (
            with_agent("  agent anything"),
            vec!["2:9: unknown agent `anything`: expected `agent any`, `agent none` or `agent { ... }`"],
        ),
        (
            in_pipeline("  post {\n    sometimes { echo 'x' }\n  }"),
            vec!["4:5: unknown post condition `sometimes`: expected one of always, changed, fixed, regression, aborted, failure, success, unstable, unsuccessful, notBuilt, cleanup"],
        ),
        (
            in_stage("      when { tag 'v*' }\n      steps { sh 'x' }"),
            vec!["5:14: unknown `when` condition `tag`: expected branch, environment, not, allOf, anyOf or beforeAgent"],
        ),
        (
            in_stage("      when { expression { return true } }\n      steps { sh 'x' }"),
            vec!["5:14: unsupported `when` condition `expression`: it needs Groovy; use branch, environment, not, allOf or anyOf"],
        ),
        (
            in_stage("      when { branch pattern: 'a', comparator: 'LIKE' }\n      steps { sh 'x' }"),
            vec!["5:47: unknown comparator `LIKE`: expected EQUALS, GLOB or REGEXP"],
        ),
        (
            in_stage("      when { not { branch 'a'; branch 'b' } }\n      steps { sh 'x' }"),
            vec!["5:14: `not` needs exactly one condition, found 2"],
        ),
        (
            in_steps("junit 'reports/*.xml'"),
            vec!["6:1: unknown step `junit`: expected sh, echo, error, dir, withEnv, timeout, retry, sleep or writeFile"],
        ),
        (
            in_steps("sh script: 'x', shell: 'bash'"),
            vec!["6:17: unknown parameter `shell` for `sh`: expected script, label, returnStatus"],
        ),
        (
            in_steps("sh returnStdout: true, script: 'x'"),
            vec!["6:4: unsupported parameter `returnStdout` for `sh`: using a step's output needs Groovy"],
        ),
        (
            in_pipeline("  options { colorize() }"),
            vec!["3:13: unknown option `colorize`: expected timeout, retry, skipDefaultCheckout or parallelsAlwaysFailFast"],
        ),
        (
            in_pipeline("  options { skipStagesAfterUnstable() }"),
            vec!["3:13: unsupported option `skipStagesAfterUnstable`: Hodei does not implement it"],
        ),
        (
            with_agent("  agent { template 'Not An Id!' }"),
            vec!["2:20: invalid template id: template id \"Not An Id!\" contains ' ' at column 4, expected only letters, digits, '-', '_' or '.'"],
        ),
        // Required parameters.
        (
            in_steps("writeFile file: 'a.txt'"),
            vec!["6:1: `writeFile` needs the parameter `text`"],
        ),
        (in_steps("sh label: 'x'"), vec!["6:1: `sh` needs the parameter `script`"]),
        (
            in_steps("writeFile 'a.txt'"),
            vec!["6:11: `writeFile` takes named parameters (file, text): expected `writeFile(file: ...)`"],
        ),
        (
            in_steps("dir('x')"),
            vec!["6:1: `dir` needs a block of steps: expected `dir(...) { ... }`"],
        ),
        (
            in_steps("sleep time: 'long'"),
            vec!["6:13: `time` expects a whole number, found 'long'"],
        ),
        (
            in_steps("retry(0) { sh 'x' }"),
            vec!["6:7: `count` expects a whole number of at least 1, found 0"],
        ),
        (
            in_steps("timeout(time: 1, unit: 'WEEKS') { sh 'x' }"),
            vec!["6:24: unknown time unit `WEEKS`: expected NANOSECONDS, MICROSECONDS, MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS"],
        ),
        // Environment names.
        (
            in_pipeline("  environment {\n    MY-VAR = 'x'\n  }"),
            vec!["4:5: environment variable name `MY-VAR` is not an identifier: expected letters, digits and `_`, not starting with a digit"],
        ),
        (
            in_steps("withEnv(['1A=x']) { sh 'x' }"),
            vec!["6:10: environment variable name `1A` is not an identifier: expected letters, digits and `_`, not starting with a digit"],
        ),
        (
            in_steps("withEnv(['PATH+MAVEN=/opt/maven/bin']) { sh 'x' }"),
            vec!["6:10: unsupported `PATH+MAVEN=...` in `withEnv`: to prepend to `PATH`, write \"PATH=...:${PATH}\""],
        ),
        (
            in_steps("timeout(time: 5, activity: true) { sh 'x' }"),
            vec!["6:18: unsupported parameter `activity` for `timeout`: only a fixed time limit is supported"],
        ),
        (
            in_steps("withEnv(['A']) { sh 'x' }"),
            vec!["6:10: `withEnv` entry `A` must be 'NAME=value'"],
        ),
        (
            in_pipeline("  environment {\n    A = env.HOME\n  }"),
            vec!["4:12: unsupported Groovy expression: method calls and property access (`env.`) need Groovy"],
        ),
        // Labels.
        (
            with_agent("  agent { label 'linux && && java' }"),
            vec!["2:27: invalid label expression: expected a label, '!' or '(', found '&&'"],
        ),
        (
            // The position counts the escape as written: `\u0061` is one label character.
            with_agent("  agent { label '\\u0061 && b c' }"),
            vec!["2:30: invalid label expression: expected '&&', '||', '->', '<->' or the end of the expression, found label \"c\""],
        ),
        (
            with_agent("  agent { label 'linux' + 'x' }"),
            vec!["2:25: unsupported Groovy expression: operator `+` needs Groovy"],
        ),
        (
            with_agent("  agent { label LINUX }"),
            vec!["2:17: a label must be a string literal: expected `label 'expression'`"],
        ),
        (
            with_agent("  agent { label \"$L\" }"),
            vec!["2:17: a label must be a plain string literal: variables (`$X`) are not allowed in labels"],
        ),
        // Groovy.
        (
            in_steps("script {\n  def x = 1\n}"),
            vec!["6:1: unsupported step `script`: `script { ... }` needs Groovy, which Hodei does not run"],
        ),
        (
            in_steps("echo \"${x.toUpperCase()}\""),
            vec!["6:7: unsupported expression `${x.toUpperCase()}` in string: only $VAR, ${VAR} and ${env.VAR} are supported"],
        ),
        (
            in_steps("if (x) { sh 'y' }"),
            vec!["6:1: unsupported Groovy statement `if`: Hodei runs declarative pipelines only"],
        ),
        // Agent segments.
        (
            "pipeline {\n  agent none\n  stages {\n    stage('Build') {\n      steps { sh 'make' }\n    }\n  }\n}".into(),
            vec!["4:5: stage `Build` has no agent: with `agent none`, every stage with steps needs its own `agent`"],
        ),
        (
            "pipeline {\n  agent none\n  stages {\n    stage('s') {\n      agent any\n      steps { sh 'make' }\n    }\n  }\n  post { always { sh 'rm -rf x' } }\n}".into(),
            vec!["9:19: step `sh` in the `always` post condition of the pipeline needs a worker, but no agent applies here (`agent none`)"],
        ),
    ];
    for (source, expected) in cases {
        check_errors(&source, &expected);
    }
}

#[test]
fn plan_refuses_stages_without_a_worker() {
    // Built valid, then changed by hand the way a library user could.
    let mut pipeline = lint(&in_stage(
        "      steps { echo 'fine without a worker' }\n      post { failure { sh 'needs one' } }",
    ))
    .expect("valid");
    pipeline.agent.kind = AgentKind::None;
    let errors: Vec<String> = plan(&pipeline)
        .expect_err("no worker for the post step")
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "6:24: step `sh` in the `failure` post condition of stage `s` needs a worker, but no agent applies here (`agent none`)"
        ]
    );
    pipeline.stages[0].body = StageBody::Steps(vec![hodei_domain::pipeline::Step {
        pos: hodei_domain::pipeline::Pos { line: 9, column: 9 },
        kind: sh("make"),
    }]);
    pipeline.stages[0].post.clear();
    let errors: Vec<String> = plan(&pipeline)
        .expect_err("no worker for the steps")
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "4:5: stage `s` has no agent: with `agent none`, every stage with steps needs its own `agent`"
        ]
    );
}

#[test]
fn every_error_of_a_file_is_reported() {
    let source = "pipeline {
  agent { label 'a &&' }
  environment { 9X = 'y' }
  stages {
    stage('one') {
      steps {
        sh 'ok'
        checkout scm
        def x = 1
        echo 'still parsed'
      }
    }
    stage('one') {
      steps { }
    }
  }
  post { sometimes { echo 'x' } }
}
";
    check_errors(
        source,
        &[
            "2:22: invalid label expression: expected a label, '!' or '(', found the end of the expression",
            "3:17: environment variable name `9X` is not an identifier: expected letters, digits and `_`, not starting with a digit",
            "8:9: unknown step `checkout`: expected sh, echo, error, dir, withEnv, timeout, retry, sleep or writeFile",
            "9:9: unsupported Groovy statement `def`: Hodei runs declarative pipelines only",
            "13:5: duplicate stage name `one` (first at 5:5)",
            "14:7: `steps` is empty: expected at least one step",
            "17:10: unknown post condition `sometimes`: expected one of always, changed, fixed, regression, aborted, failure, success, unstable, unsuccessful, notBuilt, cleanup",
        ],
    );
}

#[test]
fn deep_nesting_is_reported_not_overflowed() {
    // Nested stages, conditions and block steps up to and past the limit.
    for depth in [5, 20, 40, 100, 10_000] {
        let mut stages = "stage('leaf') { steps { sh 'x' } }".to_string();
        for i in 0..depth {
            stages = format!("stage('s{i}') {{ stages {{ {stages} }} }}");
        }
        let source = format!("pipeline {{ agent any; stages {{ {stages} }} }}");
        let parsed = parse("deep", &source);
        let too_deep = parsed
            .diagnostics
            .iter()
            .any(|d| d.message.starts_with("nesting too deep"));
        assert_eq!(too_deep, depth > 30, "depth {depth}");
        let mut steps = "sh 'x'".to_string();
        let mut when = "branch 'main'".to_string();
        for _ in 0..depth {
            steps = format!("dir('d') {{ {steps} }}");
            when = format!("not {{ {when} }}");
        }
        let parsed = parse(
            "deep",
            &in_stage(&format!("when {{ {when} }}\nsteps {{ {steps} }}")),
        );
        assert_eq!(parsed.has_errors(), depth > 55, "depth {depth}");
    }
}

#[test]
fn diagnostics_print_with_the_file_name() {
    let parsed = parse("ci/Jenkinsfile", "pipeline {\n  agent any\n}");
    let lines: Vec<String> = parsed
        .diagnostics
        .iter()
        .map(|d| d.with_file(&parsed.file).to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "ci/Jenkinsfile:1:1: missing required section `stages` in `pipeline`: expected `stages { stage('name') { ... } }`"
        ]
    );
    let error = parsed.into_result().expect_err("invalid");
    assert!(
        error
            .to_string()
            .starts_with("ci/Jenkinsfile:1:1: missing required section")
    );
}

#[test]
fn byte_order_mark_and_crlf_line_ends() {
    let source = format!("\u{feff}{}", in_steps("sh 'a'").replace('\n', "\r\n"));
    let pipeline = lint(&source).expect("valid");
    assert_eq!((pipeline.pos.line, pipeline.pos.column), (1, 1));
    let StageBody::Steps(steps) = &pipeline.stages[0].body else {
        panic!("steps");
    };
    assert_eq!(steps[0].kind, sh("a"));
    assert_eq!((steps[0].pos.line, steps[0].pos.column), (6, 1));
}

#[test]
fn positions_of_nodes() {
    let pipeline = lint(&in_steps("  echo 'a'\n    sh(\"b\")")).expect("valid");
    let StageBody::Steps(steps) = &pipeline.stages[0].body else {
        panic!("steps");
    };
    let positions: Vec<(u32, u32)> = steps.iter().map(|s| (s.pos.line, s.pos.column)).collect();
    assert_eq!(positions, [(6, 3), (7, 5)]);
    assert_eq!(
        (pipeline.stages[0].pos.line, pipeline.stages[0].pos.column),
        (4, 5)
    );
    assert_eq!(
        pipeline.agent,
        Agent {
            pos: hodei_domain::pipeline::Pos { line: 2, column: 3 },
            kind: AgentKind::Any
        }
    );
}

fn example_paths() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut paths: Vec<_> = std::fs::read_dir(&root)
        .expect("examples directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("Jenkinsfile"))
        .filter(|p| p.exists())
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_example_lints_and_plans() {
    let paths = example_paths();
    assert!(paths.len() >= 4, "{paths:?}");
    for path in paths {
        let source = std::fs::read_to_string(&path).expect("readable example");
        let parsed = parse(&path.display().to_string(), &source);
        let errors: Vec<String> = parsed
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errors, Vec::<String>::new(), "{}", path.display());
        let pipeline = parsed.pipeline.expect("valid example");
        let plan = plan(&pipeline).expect("plannable example");
        assert!(!plan.segments.is_empty(), "{}", path.display());
    }
}

#[test]
fn jenkins_style_pipelines_within_the_subset_lint_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/pipeline");
    let cases = [
        (
            "maven-docker.groovy",
            vec![
                "11:9: warning: option `buildDiscarder` has no effect in Hodei and is ignored",
                "13:9: warning: option `disableConcurrentBuilds` has no effect in Hodei and is ignored",
                "14:9: warning: option `timestamps` has no effect in Hodei and is ignored",
            ],
            1,
        ),
        ("sequential-and-parallel.groovy", vec![], 4),
    ];
    for (name, warnings, workers) in cases {
        let source = std::fs::read_to_string(dir.join(name)).expect("fixture");
        let parsed = parse(name, &source);
        let found: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(found, warnings, "{name}");
        let pipeline = parsed.pipeline.expect("valid");
        assert_eq!(
            plan(&pipeline).expect("plannable").segments.len(),
            workers,
            "{name}"
        );
    }
}

pub(crate) fn examples() -> Vec<String> {
    example_paths()
        .into_iter()
        .map(|p| std::fs::read_to_string(p).expect("readable example"))
        .collect()
}

mod no_panic {
    use proptest::prelude::*;

    use super::examples;
    use hodei_domain::pipeline::{parse, plan};

    fn lint_and_plan(source: &str) {
        let parsed = parse("fuzz", source);
        // Every diagnostic points into the file.
        let lines = source.split('\n').count() as u32;
        for d in &parsed.diagnostics {
            assert!(
                d.line >= 1 && d.line <= lines && d.column >= 1,
                "{d} outside the file"
            );
            let line_len = source
                .split('\n')
                .nth(d.line as usize - 1)
                .map_or(0, |l| l.chars().count());
            assert!(
                d.column as usize <= line_len + 1,
                "{d} past the end of its line"
            );
        }
        if let Some(pipeline) = parsed.pipeline {
            plan(&pipeline).expect("a pipeline returned by parse can always be planned");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            lint_and_plan(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn random_text_from_pipeline_tokens(
            pieces in proptest::collection::vec(
                prop::sample::select(vec![
                    "pipeline", "agent", "any", "none", "stages", "stage('s')", "steps", "sh",
                    "'x'", "\"$A${B}\"", "'''", "{", "}", "(", ")", "[", "]", ",", ":", "=", "\n",
                    " ", "parallel", "post", "always", "when", "branch", "label", "'a && b'",
                    "docker", "environment", "X", "credentials('c')", "timeout", "5", "unit:",
                    "'MINUTES'", "failFast", "true", "//", "/*", "*/", "\\", "$", "é", "\u{0}",
                ]),
                0..200,
            )
        ) {
            lint_and_plan(&pieces.concat());
        }

        #[test]
        fn mutated_examples(
            which in 0usize..16,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..12),
        ) {
            let sources = examples();
            let mut chars: Vec<char> = sources[which % sources.len()].chars().collect();
            for (index, op, c) in edits {
                if chars.is_empty() {
                    chars.push(c);
                    continue;
                }
                let i = index.index(chars.len());
                match op {
                    0 => { chars.remove(i); }
                    1 => chars.insert(i, c),
                    2 => chars[i] = c,
                    // Duplicate a slice, as when a block is pasted twice.
                    _ => {
                        let end = (i + 40).min(chars.len());
                        let copy: Vec<char> = chars[i..end].to_vec();
                        chars.splice(i..i, copy);
                    }
                }
            }
            let source: String = chars.into_iter().collect();
            lint_and_plan(&source);
        }
    }
}

/// Sibling stages need distinct names; stages under different parents
/// (parallel branches, nested `stages`) may share one, as in Jenkins.
#[test]
fn stage_names_are_unique_among_siblings_only() {
    let shared = "\
pipeline {
  agent any
  stages {
    stage('Test') {
      parallel {
        stage('linux') {
          stages {
            stage('build') { steps { sh 'make' } }
            stage('test') { steps { sh 'make test' } }
          }
        }
        stage('mac') {
          stages {
            stage('build') { steps { sh 'make' } }
            stage('test') { steps { sh 'make test' } }
          }
        }
      }
    }
    stage('build') { steps { sh 'make dist' } }
  }
}
";
    let pipeline = lint(shared).expect("names shared across parents are valid");
    let names: Vec<&str> = pipeline
        .all_stages()
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Test", "linux", "build", "test", "mac", "build", "test", "build"
        ]
    );
    check_errors(
        "\
pipeline {
  agent any
  stages {
    stage('Test') {
      parallel {
        stage('unit') { steps { sh 'a' } }
        stage('unit') { steps { sh 'b' } }
      }
    }
  }
}
",
        &["7:9: duplicate stage name `unit` (first at 6:9)"],
    );
    check_errors(
        "\
pipeline {
  agent any
  stages {
    stage('outer') {
      stages {
        stage('inner') { steps { sh 'a' } }
        stage('other') { steps { sh 'b' } }
        stage('inner') { steps { sh 'c' } }
      }
    }
    stage('inner') { steps { sh 'd' } }
  }
}
",
        &["8:9: duplicate stage name `inner` (first at 6:9)"],
    );
}
