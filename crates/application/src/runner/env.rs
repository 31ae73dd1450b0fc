//! Environment layering: build variables, then the pipeline's
//! `environment`, then the stage's, then `withEnv`; each value is expanded
//! against the layers below it.

use std::collections::BTreeMap;
use std::sync::Arc;

use hodei_domain::pipeline::{EnvValue, EnvVar, Interpolation};

use super::{JobContext, SecretResolver};

/// One layered environment; cheap to clone and share between branches.
pub(super) type Env = Arc<BTreeMap<String, String>>;

/// The bottom layer: the submission's parameters, then `BUILD_NUMBER`,
/// `JOB_NAME` and, when known, `BRANCH_NAME`.
pub(super) fn base(job: &JobContext) -> Env {
    let mut env = job.parameters.clone();
    env.insert("BUILD_NUMBER".into(), job.build_number.to_string());
    env.insert("JOB_NAME".into(), job.job_name.clone());
    if let Some(branch) = &job.branch {
        env.insert("BRANCH_NAME".into(), branch.clone());
    }
    Arc::new(env)
}

/// Expands `value` against `env` (unknown variables become empty).
pub(super) fn expand(value: &Interpolation, env: &BTreeMap<String, String>) -> String {
    value.expand(|name| env.get(name).map(String::as_str))
}

/// Adds an `environment` block on top of `below`. Each value sees the
/// variables before it in the same block, as in Jenkins.
///
/// Fails, naming the variable and its position, on an unknown credentials id.
pub(super) async fn layer(
    below: &Env,
    vars: &[EnvVar],
    secrets: &dyn SecretResolver,
) -> Result<Env, String> {
    if vars.is_empty() {
        return Ok(below.clone());
    }
    let mut env = (**below).clone();
    for var in vars {
        let value = match &var.value {
            EnvValue::Text(text) => expand(text, &env),
            EnvValue::Credentials(id) => match secrets.resolve(id).await {
                Some(secret) => secret,
                None => {
                    return Err(format!(
                        "{}: no credentials with id '{id}' for environment variable {}",
                        var.pos, var.name
                    ));
                }
            },
        };
        env.insert(var.name.clone(), value);
    }
    Ok(Arc::new(env))
}

/// Adds `withEnv` variables on top of `below`, each expanded against the
/// variables before it.
pub(super) fn with_vars(below: &Env, vars: &[(String, Interpolation)]) -> Env {
    if vars.is_empty() {
        return below.clone();
    }
    let mut env = (**below).clone();
    for (name, value) in vars {
        let value = expand(value, &env);
        env.insert(name.clone(), value);
    }
    Arc::new(env)
}
