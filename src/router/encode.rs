//! Numeric encoding of point values into Modbus registers, and back.
//!
//! Pure arithmetic, no I/O: the engineering value from a C2D body becomes the
//! raw words a point of a given type, `scale` and `word_order` holds, and
//! the words a read returns become the value again (telemetry). Kept apart
//! from body parsing (`modbus.rs`) so the bit-level rules are tested on
//! their own.
//!
//! Conventions (design.md, "C2D bodies"): each register is a `u16` sent
//! big-endian on the wire; 32-bit values take two registers, high word first
//! with `word_order = "big"` and low word first with `"little"`; signed types
//! are two's complement; `f32` is IEEE 754 single precision. Engineering value
//! = raw * scale, so the raw value written is value / scale, rounded to the
//! nearest integer for integer types.

use crate::config::{PointConfig, PointType, WordOrder};
use serde_json::Value;

/// Why a number cannot be encoded for a point type. `modbus.rs` turns it into
/// an operator-facing message naming the point.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodeError {
    /// An integer type without `scale` was given a number with a fraction.
    NotInteger,
    /// value / scale is not a finite number (e.g. `scale = 0`).
    NotFinite,
    /// The raw value (after scaling and rounding) does not fit the type.
    OutOfRange { raw: f64 },
    /// `bool` points are coils, not registers.
    NotRegisters,
}

/// The raw range of an integer type, `None` for `bool` and `f32`.
pub fn integer_range(ty: PointType) -> Option<(i64, i64)> {
    match ty {
        PointType::U16 => Some((0, u16::MAX as i64)),
        PointType::I16 => Some((i16::MIN as i64, i16::MAX as i64)),
        PointType::U32 => Some((0, u32::MAX as i64)),
        PointType::I32 => Some((i32::MIN as i64, i32::MAX as i64)),
        PointType::Bool | PointType::F32 => None,
    }
}

/// A type's raw range as text, for messages: `"0..=65535"`, `"f32"`.
pub fn range_text(ty: PointType) -> String {
    match integer_range(ty) {
        Some((lo, hi)) => format!("{lo}..={hi}"),
        None => match ty {
            PointType::F32 => format!("±{:e}", f32::MAX),
            _ => "true/false".to_string(),
        },
    }
}

/// Splits a 32-bit pattern into two registers in the given word order.
pub fn split_words(bits: u32, order: WordOrder) -> [u16; 2] {
    let hi = (bits >> 16) as u16;
    let lo = bits as u16;
    match order {
        WordOrder::Big => [hi, lo],
        WordOrder::Little => [lo, hi],
    }
}

/// Inverse of [`split_words`].
pub fn join_words(words: [u16; 2], order: WordOrder) -> u32 {
    let (hi, lo) = match order {
        WordOrder::Big => (words[0], words[1]),
        WordOrder::Little => (words[1], words[0]),
    };
    (u32::from(hi) << 16) | u32::from(lo)
}

/// Encodes an engineering `value` for a register point: the registers to
/// write, one for 16-bit types, two for 32-bit types.
///
/// Limits (`min`/`max`) are the caller's business and must be checked first;
/// this only checks that the raw value exists and fits the type.
pub fn encode_number(ty: PointType, value: f64, scale: Option<f64>, order: WordOrder) -> Result<Vec<u16>, EncodeError> {
    let raw = match scale {
        Some(s) => value / s,
        None => value,
    };
    if !raw.is_finite() {
        return Err(EncodeError::NotFinite);
    }
    if ty == PointType::F32 {
        let f = raw as f32;
        if !f.is_finite() {
            return Err(EncodeError::OutOfRange { raw });
        }
        return Ok(split_words(f.to_bits(), order).to_vec());
    }
    let (lo, hi) = integer_range(ty).ok_or(EncodeError::NotRegisters)?;
    let raw = if scale.is_some() {
        raw.round()
    } else if raw.fract() != 0.0 {
        return Err(EncodeError::NotInteger);
    } else {
        raw
    };
    // Compare as f64: lo and hi are exact in f64, and an f64 beyond i64's
    // range must not saturate into range through the cast.
    if raw < lo as f64 || raw > hi as f64 {
        return Err(EncodeError::OutOfRange { raw });
    }
    let n = raw as i64;
    Ok(match ty {
        PointType::U16 | PointType::I16 => vec![n as u16],
        _ => split_words(n as u32, order).to_vec(),
    })
}

/// Registers (or bits) read from a point → its engineering value.
pub fn decode(point: &PointConfig, words: &[u16], bits: &[bool]) -> Option<Value> {
    let scale = point.scale.unwrap_or(1.0);
    let num = |x: f64| {
        let v = x * scale;
        // Through f32's shortest text so 0.1 stays 0.1 rather than 0.100000001.
        let v = if point.ty == PointType::F32 { format!("{}", v as f32).parse().unwrap_or(v) } else { v };
        // An integer point read as a whole number stays an integer (42, not 42.0).
        if point.ty != PointType::F32 && v.fract() == 0.0 && v.abs() < 9.0e15 {
            return Some(Value::from(v as i64));
        }
        serde_json::Number::from_f64(v).map(Value::Number)
    };
    match point.ty {
        PointType::Bool => bits.first().map(|b| Value::Bool(*b)),
        PointType::U16 => num(f64::from(*words.first()?)),
        PointType::I16 => num(f64::from(*words.first()? as i16)),
        PointType::U32 | PointType::I32 | PointType::F32 => {
            let raw = join_words([*words.first()?, *words.get(1)?], point.word_order);
            match point.ty {
                PointType::U32 => num(f64::from(raw)),
                PointType::I32 => num(f64::from(raw as i32)),
                _ => num(f64::from(f32::from_bits(raw))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use PointType::*;
    use WordOrder::{Big, Little};

    #[test]
    fn words_split_and_join() {
        assert_eq!(split_words(0x41AC_0000, Big), [0x41AC, 0x0000]);
        assert_eq!(split_words(0x41AC_0000, Little), [0x0000, 0x41AC]);
        assert_eq!(split_words(0x1234_5678, Big), [0x1234, 0x5678]);
        assert_eq!(split_words(0x1234_5678, Little), [0x5678, 0x1234]);
        for bits in [0, 1, 0xFFFF, 0x1_0000, 0xDEAD_BEEF, u32::MAX] {
            for o in [Big, Little] {
                assert_eq!(join_words(split_words(bits, o), o), bits);
            }
        }
    }

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(encode_number(U16, 0.0, None, Big), Ok(vec![0]));
        assert_eq!(encode_number(U16, 65535.0, None, Big), Ok(vec![0xFFFF]));
        assert_eq!(encode_number(U16, 65536.0, None, Big), Err(EncodeError::OutOfRange { raw: 65536.0 }));
        assert_eq!(encode_number(U16, -1.0, None, Big), Err(EncodeError::OutOfRange { raw: -1.0 }));
        assert_eq!(encode_number(I16, -1.0, None, Big), Ok(vec![0xFFFF]));
        assert_eq!(encode_number(I16, -32768.0, None, Little), Ok(vec![0x8000]));
        assert_eq!(encode_number(I16, 32767.0, None, Big), Ok(vec![0x7FFF]));
        assert!(encode_number(I16, 32768.0, None, Big).is_err());
        assert!(encode_number(I16, -32769.0, None, Big).is_err());
        // -0.0 is zero.
        assert_eq!(encode_number(U16, -0.0, None, Big), Ok(vec![0]));
    }

    #[test]
    fn thirty_two_bit_types_both_orders() {
        assert_eq!(encode_number(U32, 0x1234_5678 as f64, None, Big), Ok(vec![0x1234, 0x5678]));
        assert_eq!(encode_number(U32, 0x1234_5678 as f64, None, Little), Ok(vec![0x5678, 0x1234]));
        assert_eq!(encode_number(U32, 4294967295.0, None, Big), Ok(vec![0xFFFF, 0xFFFF]));
        assert!(encode_number(U32, 4294967296.0, None, Big).is_err());
        assert!(encode_number(U32, -1.0, None, Big).is_err());
        assert_eq!(encode_number(I32, -2.0, None, Big), Ok(vec![0xFFFF, 0xFFFE]));
        assert_eq!(encode_number(I32, -2.0, None, Little), Ok(vec![0xFFFE, 0xFFFF]));
        assert_eq!(encode_number(I32, -2147483648.0, None, Big), Ok(vec![0x8000, 0x0000]));
        assert_eq!(encode_number(I32, 2147483647.0, None, Little), Ok(vec![0xFFFF, 0x7FFF]));
        assert!(encode_number(I32, 2147483648.0, None, Big).is_err());
        assert_eq!(encode_number(F32, 21.5, None, Big), Ok(vec![0x41AC, 0x0000]));
        assert_eq!(encode_number(F32, 21.5, None, Little), Ok(vec![0x0000, 0x41AC]));
        assert_eq!(encode_number(F32, -1.0, None, Big), Ok(vec![0xBF80, 0x0000]));
        assert_eq!(encode_number(F32, 1e39, None, Big), Err(EncodeError::OutOfRange { raw: 1e39 }));
        assert_eq!(encode_number(F32, f32::MAX as f64, None, Big), Ok(vec![0x7F7F, 0xFFFF]));
    }

    #[test]
    fn scale_divides_and_rounds() {
        assert_eq!(encode_number(U16, 21.5, Some(0.1), Big), Ok(vec![215]));
        assert_eq!(encode_number(U16, 21.54, Some(0.1), Big), Ok(vec![215]));
        assert_eq!(encode_number(U16, 21.56, Some(0.1), Big), Ok(vec![216]));
        assert_eq!(encode_number(I16, -21.5, Some(0.1), Big), Ok(vec![(-215i16) as u16]));
        assert_eq!(encode_number(U32, 100.0, Some(10.0), Big), Ok(vec![0, 10]));
        assert_eq!(encode_number(I32, -1.0, Some(0.5), Little), Ok(vec![0xFFFE, 0xFFFF]));
        assert_eq!(encode_number(F32, 43.0, Some(2.0), Big), Ok(vec![0x41AC, 0x0000]));
        assert_eq!(encode_number(U16, 7000.0, Some(0.1), Big), Err(EncodeError::OutOfRange { raw: 70000.0 }));
        assert_eq!(encode_number(U16, 1.0, Some(0.0), Big), Err(EncodeError::NotFinite));
        assert_eq!(encode_number(F32, 0.0, Some(0.0), Big), Err(EncodeError::NotFinite));
        // A fraction is fine with a scale (rounded), not without one.
        assert_eq!(encode_number(U16, 2.5, None, Big), Err(EncodeError::NotInteger));
        assert_eq!(encode_number(U16, 2.0, None, Big), Ok(vec![2]));
    }

    #[test]
    fn bool_is_not_a_register_type() {
        assert_eq!(encode_number(Bool, 1.0, None, Big), Err(EncodeError::NotRegisters));
        assert_eq!(range_text(U16), "0..=65535");
        assert_eq!(range_text(I32), "-2147483648..=2147483647");
    }

    fn pt(ty: &str, extra: &str) -> PointConfig {
        toml::from_str(&format!("table = \"holding\"\naddress = 0\ntype = \"{ty}\"\n{extra}")).unwrap()
    }

    #[test]
    fn decoding_follows_type_scale_and_word_order() {
        assert_eq!(decode(&pt("f32", ""), &[0x41AC, 0], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("f32", "word_order = \"little\""), &[0, 0x41AC], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("i16", ""), &[0xFFFE], &[]), Some(json!(-2)), "whole numbers stay integers");
        assert_eq!(decode(&pt("u16", "scale = 0.1"), &[215], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("i32", ""), &[0xFFFF, 0xFFFE], &[]), Some(json!(-2)));
        assert_eq!(decode(&pt("u32", ""), &[1, 0], &[]), Some(json!(65536)));
        assert_eq!(decode(&pt("u16", "scale = 0.5"), &[4], &[]), Some(json!(2)));
        assert_eq!(decode(&pt("f32", ""), &[0x4000, 0], &[]), Some(json!(2.0)), "a float stays a float");
        let coil: PointConfig = toml::from_str("table = \"coil\"\naddress = 0\ntype = \"bool\"").unwrap();
        assert_eq!(decode(&coil, &[], &[true]), Some(json!(true)));
        assert_eq!(decode(&pt("u32", ""), &[1], &[]), None, "short read");
    }
}
