//! Consensus faults: a validator proven (by the node, from two messages it signed) to have
//! equivocated in a view loses `slash_validator_bps` of its bonded stake, burned, once per view.

use cairn_types::{Event, Fault};

use crate::ctx::{Ctx, Exec, invariant};
use crate::{keys, staking};

/// Punish the block's faults. A fault of an address that is not a validator, or of a view
/// already punished, changes nothing.
pub(crate) fn apply(ctx: &mut Ctx<'_>, faults: &[Fault]) -> Exec<()> {
    let validators: Vec<cairn_types::Address> = ctx.get_or_default(keys::VALIDATORS)?;
    for f in faults {
        if validators.binary_search(&f.validator).is_err() {
            continue;
        }
        let key = keys::fault(&f.validator, f.view);
        if ctx.get::<u8>(&key)?.is_some() {
            continue;
        }
        ctx.put(key, &1u8)?;
        let bonded = staking::stake(ctx, &f.validator)?.bonded;
        let want =
            bonded.checked_bps(ctx.params.slash_validator_bps).ok_or_else(|| invariant("slash share"))?;
        let amount = staking::slash(ctx, &f.validator, want)?;
        let mut totals = ctx.totals()?;
        totals.burned = totals.burned.checked_add(amount).ok_or_else(|| invariant("burn overflow"))?;
        ctx.set_totals(&totals)?;
        ctx.emit(Event::ValidatorSlashed { validator: f.validator, view: f.view, kind: f.kind, amount });
    }
    Ok(())
}
