//! The command line's side of the Glance and Keystone settings: clap flags
//! built from `snapshot_openstack::config`'s table, whose values are handed
//! to [`snapshot_openstack::config::resolve`] (which also reads the `OS_*`
//! environment and `clouds.yaml`, in openstackclient's precedence).

use clap::{Arg, ArgAction, ArgMatches};
use snapshot_core::Result;
use snapshot_openstack::GlanceTarget;
use snapshot_openstack::config::{self, Flags, SETTINGS, Setting};

/// Glance and Keystone settings as given on the command line.
// No `Debug`: the flags may hold secrets.
#[derive(Default, Clone, clap::Args)]
#[command(next_help_heading = "Glance upload")]
pub struct CloudArgs {
    /// Upload into this Glance image (created beforehand, status queued)
    /// instead of writing a file
    #[arg(long, value_name = "ID")]
    pub glance_image: Option<String>,

    #[command(flatten)]
    flags: FlagArgs,
}

impl CloudArgs {
    /// Resolves the Glance target for `image_id` (see
    /// [`snapshot_openstack::config::resolve`]).
    pub fn resolve(&self, image_id: &str) -> Result<GlanceTarget> {
        config::resolve(&self.flags.0, image_id)
    }
}

/// The clap argument of `setting`; environment variables are read by
/// `config::resolve` (not by clap) so that the precedence is one piece of
/// code, and so that the help never shows their values.
fn arg(setting: &Setting) -> Arg {
    let arg = Arg::new(setting.flag)
        .long(setting.flag)
        .help(format!(
            "{} [env: {}]",
            setting.help,
            setting.env.join(", ")
        ))
        .help_heading(setting.heading);
    if setting.switch {
        arg.action(ArgAction::SetTrue)
    } else {
        arg.value_name(setting.value_name)
    }
}

/// [`Flags`] as clap arguments (a wrapper: clap's traits and the type live
/// in other crates).
#[derive(Default, Clone)]
struct FlagArgs(Flags);

impl clap::FromArgMatches for FlagArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut flags = FlagArgs::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        for &setting in SETTINGS {
            let value = if setting.switch {
                matches.get_flag(setting.flag).then(|| "true".to_owned())
            } else {
                matches.get_one::<String>(setting.flag).cloned()
            };
            if let Some(value) = value {
                self.0.set(setting, value);
            }
        }
        Ok(())
    }
}

impl clap::Args for FlagArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SETTINGS
            .iter()
            .fold(cmd, |cmd, setting| cmd.arg(arg(setting)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_from_the_command_line() {
        use clap::{CommandFactory, FromArgMatches, Parser};

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            cloud: CloudArgs,
        }
        Cli::command().debug_assert();
        let matches = Cli::command()
            .try_get_matches_from(["x", "--os-cloud", "lab", "--insecure", "--os-token", ""])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert_eq!(cli.cloud.flags.0.get("os-cloud"), Some("lab"));
        assert_eq!(cli.cloud.flags.0.get("insecure"), Some("true"));
        assert!(
            cli.cloud.flags.0.get("os-token").is_none(),
            "empty means not given"
        );
    }
}
