//! What an SMS is made of: a recipient in E.164 form, and a body that costs one or more
//! segments (what carriers and Twilio bill).

/// Most segments one message may take (Twilio's limit is 10 for a concatenated message).
pub const MAX_SEGMENTS: u32 = 10;

/// Whether `number` is an E.164 telephone number: `+`, a country code that does not start with
/// 0, and at most 15 digits in all.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else { return false };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// The characters of the GSM 03.38 basic set, and of its extension table (which cost two).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// How many segments `body` is sent as: GSM-7 when every character is in the GSM set (160
/// septets alone, 153 per part when split), UCS-2 otherwise (70 alone, 67 per part, a character
/// outside the Basic Multilingual Plane counting two).
pub fn segments(body: &str) -> u32 {
    let septets: Option<usize> = body.chars().try_fold(0usize, |sum, c| {
        if GSM_BASIC.contains(c) {
            Some(sum + 1)
        } else if GSM_EXTENDED.contains(c) {
            Some(sum + 2)
        } else {
            None
        }
    });
    let (units, single, part) = match septets {
        Some(septets) => (septets, 160, 153),
        None => (body.encode_utf16().count(), 70, 67),
    };
    match units {
        0 => 1,
        n if n <= single => 1,
        n => u32::try_from(n.div_ceil(part)).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_e164_or_refused() {
        for good in ["+14155550100", "+442071838750", "+4915112345678", "+12"] {
            assert!(is_e164(good), "{good}");
        }
        for bad in
            ["14155550100", "+0123", "+1 415 555 0100", "+1415555010012345", "+", "", "+1-415", "++1415"]
        {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn segments_count_as_carriers_bill_them() {
        assert_eq!(segments(""), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"a".repeat(306)), 2);
        assert_eq!(segments(&"a".repeat(307)), 3);
        // An extension character costs two septets.
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        // One character outside GSM-7 makes the whole message UCS-2.
        assert_eq!(segments(&format!("{}ł", "a".repeat(69))), 1);
        assert_eq!(segments(&format!("{}ł", "a".repeat(70))), 2);
        assert_eq!(segments(&"😀".repeat(35)), 1, "two UTF-16 units each");
        assert_eq!(segments(&"😀".repeat(36)), 2);
    }
}
