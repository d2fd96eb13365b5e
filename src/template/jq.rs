//! The jq that templates may use (explicit allow-lists of jaq's definitions and
//! natives), and compiling a program against it.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler};
use jaq_json::Val;

use super::{snippet, Trust};

/// The compiled form of one jq program.
pub(super) type Program = jaq_core::Filter<data::JustLut<Val>>;

/// The jq definitions templates may use: jq's standard library without `halt`,
/// `halt_error`, `debug`, `stderr`, `input(s)` and `env`. An explicit list, so a new
/// jaq release cannot add a capability unnoticed.
const ALLOWED_DEFS: &[&str] = &[
    "@base64",
    "@base64d",
    "@html",
    "@htmld",
    "@json",
    "@sh",
    "@text",
    "@uri",
    "@urid",
    "abs",
    "add",
    "all",
    "any",
    "arrays",
    "booleans",
    "capture",
    "capture_of_match",
    "combinations",
    "del",
    "delpaths",
    "drem",
    "empty",
    "error",
    "false",
    "finites",
    "first",
    "flatten",
    "from_entries",
    "fromdate",
    "gamma",
    "getpath",
    "gsub",
    "in",
    "index",
    "infinite",
    "inside",
    "isarray",
    "isboolean",
    "isempty",
    "isfinite",
    "isinfinite",
    "isnan",
    "isnormal",
    "isnumber",
    "isobject",
    "isstring",
    "iterables",
    "join",
    "keys",
    "last",
    "logb",
    "map",
    "map_values",
    "match",
    "max",
    "max_by",
    "min",
    "min_by",
    "nan",
    "nexttoward",
    "normals",
    "not",
    "nth",
    "null",
    "nulls",
    "numbers",
    "objects",
    "paths",
    "pick",
    "pow10",
    "range",
    "recurse",
    "repeat",
    "rindex",
    "scalars",
    "scalb",
    "scan",
    "scan_",
    "select",
    "setpath",
    "significand",
    "split",
    "splits",
    "strings",
    "sub",
    "test",
    "to_entries",
    "toboolean",
    "todate",
    "tonumber",
    "tostring",
    "totype",
    "transpose",
    "true",
    "type",
    "unique",
    "unique_by",
    "until",
    "values",
    "walk",
    "while",
    "with_entries",
];

/// The native jq functions templates may use (see [`ALLOWED_DEFS`]).
const ALLOWED_NATIVES: &[&str] = &[
    "acos",
    "acosh",
    "ascii_downcase",
    "ascii_upcase",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "bsearch",
    "cbrt",
    "ceil",
    "contains",
    "copysign",
    "cos",
    "cosh",
    "decode_base64",
    "decode_uri",
    "encode_base64",
    "encode_uri",
    "endswith",
    "erf",
    "erfc",
    "error_empty",
    "escape_html",
    "escape_sh",
    "exp",
    "exp10",
    "exp2",
    "explode",
    "expm1",
    "fabs",
    "fdim",
    "first",
    "floor",
    "fma",
    "fmax",
    "fmin",
    "fmod",
    "frexp",
    "fromdateiso8601",
    "fromjson",
    "gmtime",
    "group_by",
    "has",
    "hypot",
    "ilogb",
    "implode",
    "indices",
    "j0",
    "j1",
    "jn",
    "key_values",
    "keys_unsorted",
    "last",
    "ldexp",
    "length",
    "lgamma",
    "limit",
    "localtime",
    "log",
    "log10",
    "log1p",
    "log2",
    "ltrim",
    "ltrimstr",
    "matches",
    "max_by_or_empty",
    "min_by_or_empty",
    "mktime",
    "modf",
    "nearbyint",
    "nextafter",
    "now",
    "path",
    "path_value",
    "pow",
    "range",
    "remainder",
    "reverse",
    "rint",
    "round",
    "rtrim",
    "rtrimstr",
    "scalbln",
    "sin",
    "sinh",
    "skip",
    "sort",
    "sort_by",
    "split_",
    "split_matches",
    "sqrt",
    "startswith",
    "strflocaltime",
    "strftime",
    "strptime",
    "tan",
    "tanh",
    "tgamma",
    "tobytes",
    "todateiso8601",
    "tojson",
    "trim",
    "trunc",
    "unescape_html",
    "utf8bytelength",
    "y0",
    "y1",
    "yn",
];

/// The process environment as a jq object (`$ENV`).
pub(super) fn environment() -> Val {
    Val::obj(
        std::env::vars()
            .map(|(k, v)| (Val::from(k), Val::from(v)))
            .collect(),
    )
}

pub(super) fn compile(code: &str, trust: Trust) -> Result<Program, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let defs = defs.filter(|d| ALLOWED_DEFS.contains(&d.name));
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(move |(name, _, _)| {
            ALLOWED_NATIVES.contains(name) || (trust == Trust::Operator && *name == "env")
        });
    let globals: &[&str] = match trust {
        Trust::Event => &[],
        Trust::Operator => &["$ENV"],
    };
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, e)| match e {
                    jaq_core::load::Error::Io(v) => {
                        v.into_iter().map(|(s, m)| format!("{m} ({s})")).collect()
                    }
                    jaq_core::load::Error::Lex(v) => v
                        .into_iter()
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at)))
                        .collect(),
                    jaq_core::load::Error::Parse(v) => v
                        .into_iter()
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at)))
                        .collect::<Vec<_>>(),
                })
                .collect();
            format!("jq syntax error in `{code}`: {}", msgs.join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(globals.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, v)| v)
                .map(|(name, undef)| format!("undefined {} `{name}`", undef.as_str()))
                .collect();
            format!("jq error in `{code}`: {}", msgs.join("; "))
        })
}
