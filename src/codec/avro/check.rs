//! A budgeted walk over an Avro datum before apache-avro decodes it.

use apache_avro::Schema;

/// Deepest nesting of an Avro datum that is decoded (records, arrays, maps, unions).
pub const MAX_AVRO_DEPTH: usize = 64;

/// Check that `datum` is a well-formed encoding of `schema` within a budget, before
/// apache-avro decodes it: apache-avro trusts block counts (it reserves before it reads)
/// and recurses without a depth limit, so a 45-byte record can announce 500 million
/// entries. Every count and length must fit in the bytes left, nesting is limited to
/// [`MAX_AVRO_DEPTH`], and the walk visits each byte a bounded number of times.
pub fn check_datum(schema: &Schema, datum: &[u8]) -> Result<(), String> {
    let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)
        .map_err(|e| format!("schema: {e}"))?;
    let mut c = Check {
        names: resolved.get_names(),
        rest: datum,
    };
    c.value(schema, 0)?;
    if !c.rest.is_empty() {
        return Err(format!("{} bytes left after the record", c.rest.len()));
    }
    Ok(())
}

struct Check<'a, 's> {
    names: &'a apache_avro::schema::NamesRef<'s>,
    rest: &'a [u8],
}

impl Check<'_, '_> {
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, tail) = self
                .rest
                .split_first()
                .ok_or("the record ends inside a number")?;
            self.rest = tail;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.rest.len() {
            return Err(format!(
                "{what} of {n} bytes, but only {} bytes are left",
                self.rest.len()
            ));
        }
        self.rest = &self.rest[n..];
        Ok(())
    }

    fn length(&mut self, what: &str) -> Result<(), String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("{what} with a negative length {n}"))?;
        self.take(n, what)
    }

    /// Array or map blocks: each count must fit in the bytes left.
    fn blocks(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                count = count.checked_neg().ok_or("a block count out of range")?;
                let size = self.long()?;
                if size < 0 || size as u64 > self.rest.len() as u64 {
                    return Err(format!(
                        "a block of {size} bytes, but only {} bytes are left",
                        self.rest.len()
                    ));
                }
            }
            let count = count as u64;
            if count > self.rest.len() as u64 {
                return Err(format!(
                    "a block of {count} items, but only {} bytes are left",
                    self.rest.len()
                ));
            }
            for _ in 0..count {
                item(self, depth + 1)?;
            }
        }
    }

    fn value(&mut self, schema: &Schema, depth: usize) -> Result<(), String> {
        if depth > MAX_AVRO_DEPTH {
            return Err(format!("nested deeper than {MAX_AVRO_DEPTH} levels"));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.take(1, "a boolean"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.take(4, "a float"),
            Schema::Double => self.take(8, "a double"),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
                self.length("a string")
            }
            Schema::Fixed(f) => self.take(f.size, "a fixed"),
            Schema::Duration => self.take(12, "a duration"),
            Schema::Decimal(d) => self.value(&d.inner, depth + 1),
            Schema::Enum(e) => {
                let i = self.long()?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(format!("enum index {i} of {} symbols", e.symbols.len()));
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(depth, |c, d| c.value(&a.items, d)),
            Schema::Map(m) => self.blocks(depth, |c, d| {
                c.length("a map key")?;
                c.value(&m.types, d)
            }),
            Schema::Union(u) => {
                let i = self.long()?;
                let variant = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union index {i} of {} branches", u.variants().len()))?;
                self.value(variant, depth + 1)
            }
            Schema::Record(r) => {
                for f in &r.fields {
                    self.value(&f.schema, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let target = *self
                    .names
                    .get(name)
                    .ok_or_else(|| format!("unknown named type {name}"))?;
                self.value(target, depth + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::{encode_trigger, TRIGGER_SCHEMA};

    fn trigger() -> Schema {
        Schema::parse_str(TRIGGER_SCHEMA).unwrap()
    }

    #[test]
    fn valid_records_pass_and_huge_counts_fail_without_reserving() {
        let event = serde_json::json!({"run": {"id": "r_1"}, "action": {"identifier": "a",
            "invocationMethod": {"type": "WEBHOOK", "url": "https://x"}}, "inputs": {"a": [1, 2]}});
        let framed = encode_trigger(&event, 1).unwrap();
        let datum = &framed[5..];
        check_datum(&trigger(), datum).unwrap();
        // An array announcing 500 million entries in a few bytes.
        let schema = Schema::parse_str(r#"{"type": "array", "items": "null"}"#).unwrap();
        let mut bomb = Vec::new();
        let mut v = (500_000_000u64) << 1;
        while v >= 0x80 {
            bomb.push((v as u8) | 0x80);
            v >>= 7;
        }
        bomb.push(v as u8);
        bomb.push(0);
        let e = check_datum(&schema, &bomb).unwrap_err();
        assert!(e.contains("a block of 500000000 items"), "{e}");
        // A string longer than the record.
        let s = Schema::parse_str(r#""string""#).unwrap();
        assert!(check_datum(&s, &[0x80, 0x10, b'a']).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "N", "fields": [{"name": "n", "type": ["null", "N"]}]}"#,
        )
        .unwrap();
        // 1,000 levels of `n: {n: {…}}`: union branch 1 each, then branch 0 (null).
        let mut datum = vec![2u8; 1000];
        datum.push(0);
        let e = check_datum(&schema, &datum).unwrap_err();
        assert!(e.contains("nested deeper than 64"), "{e}");
        let mut ok = vec![2u8; 10];
        ok.push(0);
        check_datum(&schema, &ok).unwrap();
    }
}
