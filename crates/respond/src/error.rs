//! Errors building the responders from their configuration. Failures while
//! responding are not errors: they are records whose outcome says so.

/// What is wrong with the `[responders]` configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the {what} is not set: give it in the configuration or in the environment variable `{var}`"
    )]
    MissingSecret { what: &'static str, var: String },
    #[error("`{field}` is not a URL: `{url}`: {source}")]
    Url {
        field: &'static str,
        url: String,
        source: url_error::ParseError,
    },
    #[error("`{field}` must be an http or https URL: `{url}`")]
    Scheme { field: &'static str, url: String },
    #[error("two webhooks are named `{0}`")]
    DuplicateWebhook(String),
    #[error("responders.aws: {0}")]
    Aws(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

mod url_error {
    pub use reqwest::Url;
    pub type ParseError = <Url as std::str::FromStr>::Err;
}
