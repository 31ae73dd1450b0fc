//! The resources a worker asks for: requests, limits and storage.

use serde::{Deserialize, Serialize};

use crate::quantity::{CpuQuantity, MemoryQuantity};

/// Why a set of resources is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The cpu limit is below the cpu request.
    #[error("cpu_limit {limit} is below the cpu request {request}")]
    CpuLimitBelowRequest {
        /// The requested cpu.
        request: CpuQuantity,
        /// The rejected limit.
        limit: CpuQuantity,
    },
    /// The memory limit is below the memory request.
    #[error("memory_limit {limit} is below the memory request {request}")]
    MemoryLimitBelowRequest {
        /// The requested memory.
        request: MemoryQuantity,
        /// The rejected limit.
        limit: MemoryQuantity,
    },
}

impl ResourceError {
    /// The field the error is about (`cpu_limit` or `memory_limit`).
    pub fn field(&self) -> &'static str {
        match self {
            ResourceError::CpuLimitBelowRequest { .. } => "cpu_limit",
            ResourceError::MemoryLimitBelowRequest { .. } => "memory_limit",
        }
    }
}

/// Cpu and memory requests, optional limits, optional storage.
///
/// A limit is never below its request: [`ResourceRequirements::with_cpu_limit`]
/// and [`ResourceRequirements::with_memory_limit`] refuse it, so a value of
/// this type is always valid. Without a limit, the request is the limit
/// ([`ResourceRequirements::effective_cpu_limit`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ResourcesSpec", into = "ResourcesSpec")]
pub struct ResourceRequirements {
    cpu: CpuQuantity,
    memory: MemoryQuantity,
    cpu_limit: Option<CpuQuantity>,
    memory_limit: Option<MemoryQuantity>,
    storage: Option<MemoryQuantity>,
}

impl ResourceRequirements {
    /// Requests of `cpu` and `memory`, with no limits and no storage.
    pub fn new(cpu: CpuQuantity, memory: MemoryQuantity) -> Self {
        ResourceRequirements {
            cpu,
            memory,
            cpu_limit: None,
            memory_limit: None,
            storage: None,
        }
    }

    /// Sets the cpu limit.
    ///
    /// # Errors
    /// [`ResourceError::CpuLimitBelowRequest`] if `limit` is below the request.
    pub fn with_cpu_limit(mut self, limit: CpuQuantity) -> Result<Self, ResourceError> {
        if limit < self.cpu {
            return Err(ResourceError::CpuLimitBelowRequest {
                request: self.cpu,
                limit,
            });
        }
        self.cpu_limit = Some(limit);
        Ok(self)
    }

    /// Sets the memory limit.
    ///
    /// # Errors
    /// [`ResourceError::MemoryLimitBelowRequest`] if `limit` is below the
    /// request.
    pub fn with_memory_limit(mut self, limit: MemoryQuantity) -> Result<Self, ResourceError> {
        if limit < self.memory {
            return Err(ResourceError::MemoryLimitBelowRequest {
                request: self.memory,
                limit,
            });
        }
        self.memory_limit = Some(limit);
        Ok(self)
    }

    /// Sets the ephemeral storage request.
    pub fn with_storage(mut self, storage: MemoryQuantity) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The cpu request.
    pub fn cpu(&self) -> CpuQuantity {
        self.cpu
    }

    /// The memory request.
    pub fn memory(&self) -> MemoryQuantity {
        self.memory
    }

    /// The cpu limit, if one was set.
    pub fn cpu_limit(&self) -> Option<CpuQuantity> {
        self.cpu_limit
    }

    /// The memory limit, if one was set.
    pub fn memory_limit(&self) -> Option<MemoryQuantity> {
        self.memory_limit
    }

    /// The storage request, if one was set.
    pub fn storage(&self) -> Option<MemoryQuantity> {
        self.storage
    }

    /// The cpu limit, or the request when no limit was set.
    pub fn effective_cpu_limit(&self) -> CpuQuantity {
        self.cpu_limit.unwrap_or(self.cpu)
    }

    /// The memory limit, or the request when no limit was set.
    pub fn effective_memory_limit(&self) -> MemoryQuantity {
        self.memory_limit.unwrap_or(self.memory)
    }
}

/// The plain, unvalidated shape of [`ResourceRequirements`], as written in
/// template files (`resources: {cpu, memory, cpu_limit, memory_limit,
/// storage}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Cpu request.
    pub cpu: CpuQuantity,
    /// Memory request.
    pub memory: MemoryQuantity,
    /// Cpu limit, at least `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<CpuQuantity>,
    /// Memory limit, at least `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<MemoryQuantity>,
    /// Ephemeral storage request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<MemoryQuantity>,
}

impl TryFrom<ResourcesSpec> for ResourceRequirements {
    type Error = ResourceError;

    fn try_from(spec: ResourcesSpec) -> Result<Self, Self::Error> {
        let mut r = ResourceRequirements::new(spec.cpu, spec.memory);
        if let Some(limit) = spec.cpu_limit {
            r = r.with_cpu_limit(limit)?;
        }
        if let Some(limit) = spec.memory_limit {
            r = r.with_memory_limit(limit)?;
        }
        if let Some(storage) = spec.storage {
            r = r.with_storage(storage);
        }
        Ok(r)
    }
}

impl From<ResourceRequirements> for ResourcesSpec {
    fn from(r: ResourceRequirements) -> Self {
        ResourcesSpec {
            cpu: r.cpu,
            memory: r.memory,
            cpu_limit: r.cpu_limit,
            memory_limit: r.memory_limit,
            storage: r.storage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(s: &str) -> CpuQuantity {
        CpuQuantity::parse(s).unwrap()
    }

    fn mem(s: &str) -> MemoryQuantity {
        MemoryQuantity::parse(s).unwrap()
    }

    /// (cpu, memory, cpu_limit, memory_limit) → expected error text.
    fn check(
        requests: (&str, &str),
        limits: (Option<&str>, Option<&str>),
        expected: Result<(), &str>,
    ) {
        let spec = ResourcesSpec {
            cpu: cpu(requests.0),
            memory: mem(requests.1),
            cpu_limit: limits.0.map(cpu),
            memory_limit: limits.1.map(mem),
            storage: None,
        };
        let got = ResourceRequirements::try_from(spec)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            got,
            expected.map_err(str::to_owned),
            "{requests:?} {limits:?}"
        );
    }

    #[test]
    fn limits_at_least_requests() {
        check(("1", "2Gi"), (None, None), Ok(()));
        check(("1", "2Gi"), (Some("2"), Some("4Gi")), Ok(()));
        check(("1", "2Gi"), (Some("1000m"), Some("2048Mi")), Ok(()));
        check(
            ("1", "2Gi"),
            (Some("999m"), None),
            Err("cpu_limit 999m is below the cpu request 1"),
        );
        check(
            ("500m", "1Gi"),
            (None, Some("1G")),
            Err("memory_limit 1G is below the memory request 1Gi"),
        );
    }

    #[test]
    fn effective_limits_default_to_requests() {
        let r = ResourceRequirements::new(cpu("500m"), mem("1Gi"));
        assert_eq!(r.effective_cpu_limit(), cpu("500m"));
        assert_eq!(r.effective_memory_limit(), mem("1Gi"));
        let r = r.with_cpu_limit(cpu("1")).unwrap();
        assert_eq!(r.effective_cpu_limit(), cpu("1"));
    }
}
