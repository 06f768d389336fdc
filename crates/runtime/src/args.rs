//! Value parsers the services' flags share, so a flag's value is checked and typed once, when it
//! is parsed (a bad value exits 64 with clap's message naming the flag), and the code after
//! parsing never sees a raw string or a unitless number.

use std::time::Duration;

/// A non-negative number of seconds (fractions allowed: `0.5`) as a [`Duration`].
pub fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text:?} is not a non-negative number of seconds"))
}

/// A whole number of milliseconds as a [`Duration`].
pub fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))
}

/// A whole number of microseconds as a [`Duration`].
pub fn micros(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_micros)
        .map_err(|_| format!("{text:?} is not a whole number of microseconds"))
}

/// A count of at least one (rows, items).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// A name that is not empty or blank (topics, ids, groups).
pub fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_carry_their_unit_and_refuse_nonsense() {
        assert_eq!(seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
        assert!(seconds("-1").unwrap_err().contains("non-negative"));
        assert!(seconds("ten").is_err());
        assert!(seconds("NaN").is_err());
        assert_eq!(millis("1500"), Ok(Duration::from_millis(1500)));
        assert!(millis("1.5").is_err());
        assert_eq!(micros("200"), Ok(Duration::from_micros(200)));
        assert!(non_empty("  ").is_err());
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err());
        assert_eq!(non_empty("kappa.models").as_deref(), Ok("kappa.models"));
    }
}
