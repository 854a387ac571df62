//! Signed blob uploads. A validator's blob endpoint keeps an upload only when a funded account
//! signed it: the request names the blob and its size in headers, signed with the account's
//! key over the chain id, so the validator can refuse it (and charge it to a quota) before
//! reading a byte of the body. An upload that no transaction names within the validator's
//! time limit is deleted.

use crate::{Address, ContentId, Result, SecretKey, Signature, hash_domain};

/// Header: the uploading account (`cairn1…`).
pub const UPLOADER_HEADER: &str = "x-cairn-uploader";
/// Header: the account's signature (hex) over [`upload_message`].
pub const SIGNATURE_HEADER: &str = "x-cairn-signature";
/// Header: the blob's id (hex); the body must hash to it and be `content-length` bytes.
pub const BLOB_HEADER: &str = "x-cairn-blob";

/// What an uploader signs: the chain, the blob and its size.
pub fn upload_message(chain_id: &str, id: &ContentId, size: u64) -> [u8; 32] {
    hash_domain("cairn blob upload v1", &[chain_id.as_bytes(), &id.0, &size.to_le_bytes()])
}

/// An account's key and the chain it uploads to.
#[derive(Clone, Debug)]
pub struct UploadAuth {
    /// The signing key.
    pub key: SecretKey,
    /// The chain id signed over.
    pub chain_id: String,
}

impl UploadAuth {
    /// The headers that sign an upload of blob `id` (`size` bytes); the request also names
    /// the blob in [`BLOB_HEADER`].
    pub fn headers(&self, id: &ContentId, size: u64) -> [(&'static str, String); 2] {
        let sig = self.key.sign(&upload_message(&self.chain_id, id, size));
        [(UPLOADER_HEADER, self.key.address().to_string()), (SIGNATURE_HEADER, sig.to_string())]
    }
}

/// Check an upload's signature: the account it comes from.
///
/// # Errors
/// [`crate::Error::BadSignature`] (or an address or signature that does not parse).
pub fn verify_upload(
    chain_id: &str,
    uploader: &str,
    signature: &str,
    id: &ContentId,
    size: u64,
) -> Result<Address> {
    let who: Address = uploader.parse()?;
    let sig: Signature = signature.parse()?;
    who.verify(&upload_message(chain_id, id, size), &sig)?;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_upload_verifies_only_for_its_chain_blob_and_size() {
        let auth = UploadAuth { key: SecretKey::from_seed([3; 32]), chain_id: "cairn-test".into() };
        let id = ContentId::of(b"data");
        let [(_, who), (_, sig)] = auth.headers(&id, 4);
        assert_eq!(verify_upload("cairn-test", &who, &sig, &id, 4).unwrap(), auth.key.address());
        assert!(verify_upload("cairn-other", &who, &sig, &id, 4).is_err(), "another chain");
        assert!(verify_upload("cairn-test", &who, &sig, &id, 5).is_err(), "another size");
        assert!(verify_upload("cairn-test", &who, &sig, &ContentId::of(b"x"), 4).is_err(), "another blob");
        let other = SecretKey::from_seed([4; 32]).address().to_string();
        assert!(verify_upload("cairn-test", &other, &sig, &id, 4).is_err(), "another account");
        assert!(verify_upload("cairn-test", "nobody", &sig, &id, 4).is_err());
        assert!(verify_upload("cairn-test", &who, "zz", &id, 4).is_err());
    }
}
