//! How inbound messages are keyed on the FIFO queue: the one place that decides the
//! `MessageGroupId` (ordering) and the `MessageDeduplicationId` (first dedup layer).

use aws_lc_rs::digest;

use crate::digest::sha256_hex;

use crate::envelope::Channel;

/// SQS limit for `MessageGroupId` and `MessageDeduplicationId`.
const SQS_ID_MAX: usize = 128;

/// Which messages share a FIFO group, i.e. are processed one at a time, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderingScope {
    /// One group per channel account (WhatsApp phone_number_id, IG account, web chat site).
    /// Strictest ordering; a busy account is serialised.
    #[default]
    ChannelAccount,
    /// One group per (channel account, contact): conversations of one account run in parallel,
    /// each still in order.
    Conversation,
}

impl OrderingScope {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "channel_account" => Ok(Self::ChannelAccount),
            "conversation" => Ok(Self::Conversation),
            other => Err(format!(
                "ORDERING_SCOPE must be `channel_account` or `conversation`, got `{other}`"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChannelAccount => "channel_account",
            Self::Conversation => "conversation",
        }
    }
}

/// The `MessageGroupId` of a message. Always contains the channel account id, so a group never
/// mixes two accounts. A key longer than SQS allows (a long BSUID) is replaced by its SHA-256, which
/// keeps it stable and unique.
pub fn message_group_id(
    scope: OrderingScope,
    channel: Channel,
    channel_account_id: &str,
    contact_id: &str,
) -> String {
    let key = match scope {
        OrderingScope::ChannelAccount => format!("{}:{}", channel.as_str(), channel_account_id),
        OrderingScope::Conversation => {
            format!("{}:{}:{}", channel.as_str(), channel_account_id, contact_id)
        }
    };
    if key.len() <= SQS_ID_MAX && key.bytes().all(is_sqs_id_byte) {
        key
    } else {
        sha256_hex(key.as_bytes())
    }
}

/// The `MessageDeduplicationId`: hex SHA-256 of `channel:account:provider_message_id`. The same
/// string keys the processor's idempotency record.
pub fn dedup_id(channel: Channel, channel_account_id: &str, provider_message_id: &str) -> String {
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(channel.as_str().as_bytes());
    h.update(b":");
    h.update(channel_account_id.as_bytes());
    h.update(b":");
    h.update(provider_message_id.as_bytes());
    hex::encode(h.finish())
}

/// SQS accepts alphanumerics and ASCII punctuation in group and dedup ids.
fn is_sqs_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b.is_ascii_punctuation()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_account_scope_ignores_the_contact() {
        let a = message_group_id(
            OrderingScope::ChannelAccount,
            Channel::Whatsapp,
            "106540",
            "A",
        );
        let b = message_group_id(
            OrderingScope::ChannelAccount,
            Channel::Whatsapp,
            "106540",
            "B",
        );
        assert_eq!(a, "whatsapp:106540");
        assert_eq!(a, b);
    }

    #[test]
    fn conversation_scope_separates_contacts_of_one_account() {
        let a = message_group_id(
            OrderingScope::Conversation,
            Channel::Whatsapp,
            "106540",
            "MX.1",
        );
        let b = message_group_id(
            OrderingScope::Conversation,
            Channel::Whatsapp,
            "106540",
            "MX.2",
        );
        assert_eq!(a, "whatsapp:106540:MX.1");
        assert_ne!(a, b);
    }

    #[test]
    fn same_account_id_on_two_channels_never_shares_a_group() {
        let wa = message_group_id(OrderingScope::ChannelAccount, Channel::Whatsapp, "1", "x");
        let ig = message_group_id(OrderingScope::ChannelAccount, Channel::Instagram, "1", "x");
        assert_ne!(wa, ig);
    }

    #[test]
    fn overlong_or_odd_keys_are_hashed_to_a_valid_group_id() {
        let long_bsuid = format!("US.{}", "a".repeat(128));
        let g = message_group_id(
            OrderingScope::Conversation,
            Channel::Whatsapp,
            "1",
            &long_bsuid,
        );
        assert_eq!(g.len(), 64);
        assert!(g.bytes().all(|b| b.is_ascii_hexdigit()));
        let spaced = message_group_id(OrderingScope::Conversation, Channel::Webchat, "s", "a b");
        assert_eq!(spaced.len(), 64);
        // Stable: the same input hashes to the same group.
        assert_eq!(
            g,
            message_group_id(
                OrderingScope::Conversation,
                Channel::Whatsapp,
                "1",
                &long_bsuid
            )
        );
    }

    #[test]
    fn dedup_id_is_sha256_of_the_documented_string() {
        let id = dedup_id(Channel::Whatsapp, "106540", "wamid.X");
        assert_eq!(id, sha256_hex(b"whatsapp:106540:wamid.X"));
        assert_eq!(id.len(), 64);
        assert_ne!(id, dedup_id(Channel::Instagram, "106540", "wamid.X"));
    }

    #[test]
    fn scope_parses_known_values_only() {
        assert_eq!(
            OrderingScope::parse("conversation"),
            Ok(OrderingScope::Conversation)
        );
        assert_eq!(
            OrderingScope::parse("channel_account"),
            Ok(OrderingScope::ChannelAccount)
        );
        assert!(OrderingScope::parse("per_number").is_err());
    }
}
