//! `datamailer reputation [resume]`: the account-wide reputation guard as an operator sees it
//! (`datamailer_actors::reputation` is the guard itself).

use datamailer_actors::reputation;

use crate::commands::queues::small_db;
use crate::config::Config;

/// `datamailer reputation`: the account-wide guard's state and the rates it reads.
pub async fn status(config: Config) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let s = config.feedback;
    let rates = reputation::rates(&db, s.account_window).await?;
    println!(
        "last {} sends (window {}, minimum sample {}): hard bounces {} ({:.3}%, threshold {:.3}%), complaints {} ({:.3}%, threshold {:.3}%)",
        rates.sends,
        s.account_window,
        s.min_sample,
        rates.bounces,
        rates.bounce_rate() * 100.0,
        s.bounce_threshold * 100.0,
        rates.complaints,
        rates.complaint_rate() * 100.0,
        s.complaint_threshold * 100.0,
    );
    if rates.tripped {
        println!(
            "campaign sending is PAUSED account-wide: {}\nend it with: datamailer reputation resume",
            rates.reason
        );
    } else {
        println!("campaign sending is not held");
    }
    Ok(())
}

/// `datamailer reputation resume`: ends the guard; the campaigns it paused carry on.
pub async fn resume(config: Config) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let (was_tripped, resumed) = reputation::clear(&db).await?;
    if was_tripped {
        println!(
            "the reputation guard is cleared: {resumed} campaigns it paused carry on, and sends count from now on"
        );
    } else {
        println!("the reputation guard was not holding campaign sending");
    }
    Ok(())
}
