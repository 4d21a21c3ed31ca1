//! Feeds arbitrary bytes to the GitHub audit log importer, through the checks every
//! importer is held to (`custody_fuzz::check_import`): no panic, the source
//! contract kept, every event decoding to itself.

#![no_main]

use custody_import::GitHub;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| custody_fuzz::check_import(&GitHub, bytes));
