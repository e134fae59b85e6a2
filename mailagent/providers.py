"""Mail providers: the hosts, ports and habits `mailagent init` and `mailagent check` rely on.

A flat catalogue, no I/O. In: a provider key or an IMAP host name. Out: a frozen `Provider`
with its servers, where its app passwords are made, which owner verification suits the
Authentication-Results headers it writes, and its OAuth2 endpoints when it offers XOAUTH2.
Hosts and ports here are defaults; every one can be overridden by the user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OAuthEndpoints:
    """Where a provider's OAuth2 flows run: a `device_url` means the device flow (RFC 8628),
    otherwise the loopback redirect to `auth_url`."""

    token_url: str
    scope: str
    auth_url: str = ""  # the browser page of the loopback (authorization code) flow
    device_url: str = ""  # the device authorization endpoint of the device flow
    help_url: str = ""  # where the owner registers the client id the flow needs


@dataclass(frozen=True)
class Provider:
    key: str
    name: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    app_password: str  # where and why to make an app password, one sentence
    imap_setting: str  # where IMAP is switched on, if the provider lets it be off
    verification: str  # suggested owner.verification
    authserv_ids: tuple[str, ...] = ()
    oauth: OAuthEndpoints | None = None
    domains: tuple[str, ...] = ()  # address domains that suggest this provider


GOOGLE_OAUTH = OAuthEndpoints(
    auth_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    scope="https://mail.google.com/",
    help_url="https://console.cloud.google.com/apis/credentials (a Desktop app client)",
)

MICROSOFT_OAUTH = OAuthEndpoints(
    device_url="https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
    token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
    scope="https://outlook.office.com/IMAP.AccessAsUser.All "
          "https://outlook.office.com/SMTP.Send offline_access",
    help_url="https://entra.microsoft.com (App registrations, public client flows allowed)",
)

PROVIDERS: dict[str, Provider] = {p.key: p for p in (
    Provider(
        "gmail", "Gmail / Google Workspace", "imap.gmail.com", 993, "ssl",
        "smtp.gmail.com", 465, "ssl",
        app_password="Gmail refuses your normal password here: turn on 2-Step Verification, "
                     "then make an app password at https://myaccount.google.com/apppasswords "
                     "(or use --oauth)",
        imap_setting="Gmail settings > See all settings > Forwarding and POP/IMAP > Enable IMAP",
        verification="authentication-results", authserv_ids=("mx.google.com",),
        oauth=GOOGLE_OAUTH, domains=("gmail.com", "googlemail.com"),
    ),
    Provider(
        "outlook", "Outlook.com / Microsoft 365", "outlook.office365.com", 993, "ssl",
        "smtp.office365.com", 587, "starttls",
        app_password="Microsoft accounts with two-step verification need an app password from "
                     "https://account.live.com/proofs/AppPassword; many Microsoft 365 "
                     "organisations allow only OAuth2 (use --oauth)",
        imap_setting="Outlook.com settings > Mail > Forwarding and IMAP > Let devices and apps "
                     "use IMAP (Microsoft 365: your admin enables IMAP for the mailbox)",
        # Microsoft's Authentication-Results headers carry no authserv-id: verify DKIM here.
        verification="dkim",
        oauth=MICROSOFT_OAUTH, domains=("outlook.com", "hotmail.com", "live.com", "msn.com"),
    ),
    Provider(
        "fastmail", "Fastmail", "imap.fastmail.com", 993, "ssl",
        "smtp.fastmail.com", 465, "ssl",
        app_password="Fastmail needs an app password: Settings > Privacy & Security > "
                     "Manage app passwords (https://app.fastmail.com/settings/security/apps)",
        imap_setting="IMAP is always on at Fastmail; the app password must allow IMAP and SMTP",
        # The authserv-id names whichever mx host took the mail (mx1...mx6): verify DKIM.
        verification="dkim", domains=("fastmail.com", "fastmail.fm"),
    ),
    Provider(
        "icloud", "iCloud Mail", "imap.mail.me.com", 993, "ssl",
        "smtp.mail.me.com", 587, "starttls",
        app_password="iCloud needs an app-specific password: https://account.apple.com > "
                     "Sign-In and Security > App-Specific Passwords",
        imap_setting="iCloud Mail must be switched on for the Apple Account (iCloud settings)",
        verification="dkim", domains=("icloud.com", "me.com", "mac.com"),
    ),
    Provider(
        "yahoo", "Yahoo Mail", "imap.mail.yahoo.com", 993, "ssl",
        "smtp.mail.yahoo.com", 465, "ssl",
        app_password="Yahoo needs an app password: https://login.yahoo.com/account/security > "
                     "Generate app password",
        imap_setting="Yahoo Mail settings > Mailboxes: IMAP access is on for app passwords",
        verification="dkim", domains=("yahoo.com", "ymail.com", "rocketmail.com"),
    ),
    Provider(
        "generic", "Another provider", "", 993, "ssl", "", 465, "ssl",
        app_password="If your provider offers app passwords (most do when two-step "
                     "verification is on), use one rather than your main password",
        imap_setting="Some providers switch IMAP off by default: look for IMAP in the "
                     "webmail's settings",
        verification="dkim",
    ),
)}


def get_provider(key: str) -> Provider:
    """The provider named `key`; KeyError names the known ones."""
    try:
        return PROVIDERS[key]
    except KeyError:
        raise KeyError(f"unknown provider {key!r}: use one of {', '.join(PROVIDERS)}") from None


def guess_provider(address: str) -> Provider:
    """The provider an address's domain suggests, or `generic`."""
    domain = address.rpartition("@")[2].lower()
    for provider in PROVIDERS.values():
        if domain in provider.domains:
            return provider
    return PROVIDERS["generic"]


def provider_for_host(host: str) -> Provider | None:
    """The provider whose IMAP or SMTP server this is, for `check`'s hints."""
    host = host.lower()
    for provider in PROVIDERS.values():
        if provider.imap_host and host in (provider.imap_host, provider.smtp_host):
            return provider
    return None
