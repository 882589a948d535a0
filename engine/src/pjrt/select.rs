//! Which of a plugin's addressable devices a process serves: `--device N` (one) or
//! `--devices all|0,2` (several, one engine each over one shared client).
//!
//! Why a type of its own: the selection is written before the plugin is opened (a flag) and
//! can only be checked against the device count after the client exists, so parsing and
//! resolving are two steps, and a wrong index must fail before any weight is read, with a
//! message naming how many devices there are.

use std::fmt;
use std::str::FromStr;

/// The devices asked for, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelection {
    /// Every addressable device of the client, in the plugin's order.
    All,
    /// These indices among the addressable devices.
    Listed(Vec<usize>),
}

/// A device selection that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// An index at or past the client's device count.
    #[error("{}", missing(*device, *count))]
    Missing { device: usize, count: usize },
    /// The same index twice: two engines cannot share one device's weights and cache.
    #[error("device {0} is listed twice")]
    Duplicate(usize),
    #[error("the PJRT plugin reports no addressable devices")]
    NoDevices,
    /// Not `all` nor a comma-separated list of indices.
    #[error("--devices wants `all` or device indices such as `0,2`, not '{0}'")]
    Syntax(String),
}

fn missing(device: usize, count: usize) -> String {
    match count {
        0 => format!("device {device} does not exist (the plugin has no addressable devices)"),
        1 => format!("device {device} does not exist (the plugin has 1 addressable device: 0)"),
        n => format!(
            "device {device} does not exist (the plugin has {n} addressable devices: 0 to {})",
            n - 1
        ),
    }
}

impl DeviceSelection {
    /// Just device `index` (`--device`).
    pub fn one(index: usize) -> Self {
        DeviceSelection::Listed(vec![index])
    }

    /// The indices to serve on a client with `count` addressable devices.
    pub fn resolve(&self, count: usize) -> Result<Vec<usize>, DeviceError> {
        match self {
            DeviceSelection::All if count == 0 => Err(DeviceError::NoDevices),
            DeviceSelection::All => Ok((0..count).collect()),
            DeviceSelection::Listed(list) => {
                let mut seen = Vec::with_capacity(list.len());
                for &device in list {
                    if device >= count {
                        return Err(DeviceError::Missing { device, count });
                    }
                    if seen.contains(&device) {
                        return Err(DeviceError::Duplicate(device));
                    }
                    seen.push(device);
                }
                Ok(seen)
            }
        }
    }
}

impl FromStr for DeviceSelection {
    type Err = DeviceError;

    /// `all`, or indices separated by commas (`0,2`; spaces allowed).
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(DeviceSelection::All);
        }
        let list: Vec<usize> = s
            .split(',')
            .map(|part| part.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| DeviceError::Syntax(s.to_string()))?;
        // `resolve` with an unbounded count checks for duplicates now, before the plugin loads.
        DeviceSelection::Listed(list.clone()).resolve(usize::MAX)?;
        Ok(DeviceSelection::Listed(list))
    }
}

impl fmt::Display for DeviceSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelection::All => f.write_str("all"),
            DeviceSelection::Listed(list) => {
                let parts: Vec<String> = list.iter().map(usize::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_and_lists() {
        assert_eq!("all".parse(), Ok(DeviceSelection::All));
        assert_eq!(" ALL ".parse(), Ok(DeviceSelection::All));
        assert_eq!("0, 2".parse(), Ok(DeviceSelection::Listed(vec![0, 2])));
        assert_eq!("3".parse(), Ok(DeviceSelection::one(3)));
        for bad in ["", "0,", "a", "-1", "0;1", "1.5"] {
            assert!(
                matches!(bad.parse::<DeviceSelection>(), Err(DeviceError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "1,0,1".parse::<DeviceSelection>(),
            Err(DeviceError::Duplicate(1))
        );
        assert_eq!(DeviceSelection::Listed(vec![0, 2]).to_string(), "0,2");
    }

    #[test]
    fn resolves_against_the_device_count() {
        assert_eq!(DeviceSelection::All.resolve(2), Ok(vec![0, 1]));
        assert_eq!(DeviceSelection::All.resolve(0), Err(DeviceError::NoDevices));
        assert_eq!(
            DeviceSelection::Listed(vec![1, 0]).resolve(2),
            Ok(vec![1, 0])
        );
        let err = DeviceSelection::one(5).resolve(2).unwrap_err();
        assert_eq!(
            err,
            DeviceError::Missing {
                device: 5,
                count: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "device 5 does not exist (the plugin has 2 addressable devices: 0 to 1)"
        );
        assert_eq!(
            DeviceSelection::one(1).resolve(1).unwrap_err().to_string(),
            "device 1 does not exist (the plugin has 1 addressable device: 0)"
        );
    }
}
