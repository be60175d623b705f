#!/usr/bin/perl
# Independent DKIM verifier for the tests: Perl's Mail::DKIM, public keys from a
# local file instead of DNS.
#
#   perl dkim_verify.pl KEYS_FILE < message
#
# KEYS_FILE has one "NAME TXT-VALUE" per line, e.g.
#   sel._domainkey.example.com v=DKIM1; k=rsa; p=MIIB...
# Prints one line per signature, "RESULT a=ALGORITHM d=DOMAIN s=SELECTOR; DETAILS",
# then "overall RESULT". Exit status 0 unless the verifier itself failed.
#
# Debian bookworm's Mail::DKIM (1.20230212) predates its ed25519-sha256 support, so
# the RFC 8463 algorithm is plugged in below with CryptX's Crypt::PK::Ed25519; the
# canonicalisation, header selection and body hash stay Mail::DKIM's own.
use strict;
use warnings;

use Mail::DKIM 0.40;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Mail::DKIM::PublicKey;
use Mail::DKIM::Signature;
use Mail::DKIM::Algorithm::rsa_sha256;
use Net::DNS;

{
    package LocalKeys::Resolver;

    sub new {
        my ( $class, $path ) = @_;
        my %txt;
        open my $fh, '<', $path or die "cannot open $path: $!\n";
        while ( my $line = <$fh> ) {
            chomp $line;
            next if $line =~ /^\s*(#|$)/;
            my ( $name, $value ) = split /\s+/, $line, 2;
            push @{ $txt{ lc $name } }, $value;
        }
        close $fh;
        return bless { txt => \%txt, error => 'NOERROR' }, $class;
    }

    # Mail::DKIM::DNS::query calls send(name, type) and reads header->rcode and answer.
    sub send {
        my ( $self, $name, $type ) = @_;
        my $packet = Net::DNS::Packet->new( $name, $type, 'IN' );
        $packet->header->qr(1);
        my $values = $self->{txt}{ lc $name };
        if ( uc $type eq 'TXT' && $values ) {
            $packet->header->rcode('NOERROR');
            $packet->push(
                answer => Net::DNS::RR->new(
                    name    => $name,
                    type    => 'TXT',
                    ttl     => 60,
                    txtdata => $_,
                )
            ) for @$values;
        }
        else {
            $packet->header->rcode('NXDOMAIN');
        }
        return $packet;
    }

    sub errorstring { return $_[0]{error} }
}

{
    package LocalKeys::Ed25519Cork;
    use Crypt::PK::Ed25519;

    sub new {
        my ( $class, $raw ) = @_;
        die "Ed25519 public key must be 32 bytes\n" unless length($raw) == 32;
        my $pk = Crypt::PK::Ed25519->new;
        $pk->import_key_raw( $raw, 'public' );
        return bless { pk => $pk }, $class;
    }

    sub size { return 32 }    # bytes; only compared against the RSA minimum in Strict mode

    sub verify_message {
        my ( $self, $signature, $message ) = @_;
        return $self->{pk}->verify_message( $signature, $message );
    }
}

{
    package Mail::DKIM::Algorithm::ed25519_sha256;
    use base 'Mail::DKIM::Algorithm::rsa_sha256';    # same SHA-256 digests
    use MIME::Base64 qw(decode_base64);

    # RFC 8463 §3: the signature is PureEdDSA over the SHA-256 of the header data.
    sub verify {
        my $self       = shift;
        my $public_key = $self->signature->get_public_key;
        my $cork       = $public_key->cork;
        return unless ref $cork eq 'LocalKeys::Ed25519Cork';
        my $digest = $self->{header_digest}->digest;
        my $sig    = decode_base64( $self->signature->data );
        return unless length($sig) == 64 && $cork->verify_message( $sig, $digest );
        return $self->check_body_hash;
    }
}

{
    no warnings 'redefine';

    my $orig_class = \&Mail::DKIM::Signature::get_algorithm_class;
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        my ( $self, $algorithm ) = @_;
        return 'Mail::DKIM::Algorithm::ed25519_sha256'
          if defined $algorithm && $algorithm eq 'ed25519-sha256';
        return $orig_class->(@_);
    };

    my $orig_hash = \&Mail::DKIM::Signature::hash_algorithm;
    *Mail::DKIM::Signature::hash_algorithm = sub {
        my ($self) = @_;
        return 'sha256' if ( $self->algorithm // '' ) eq 'ed25519-sha256';
        return $orig_hash->(@_);
    };

    my $orig_check = \&Mail::DKIM::PublicKey::check;
    *Mail::DKIM::PublicKey::check = sub {
        my ($self) = @_;
        return $orig_check->(@_) unless ( $self->get_tag('k') // '' ) eq 'ed25519';
        if ( my $v = $self->get_tag('v') ) {
            die "unsupported version\n" unless $v eq 'DKIM1';
        }
        my $p = $self->data;
        die "missing p= tag\n" unless defined $p;
        die "revoked\n" if $p eq '';
        die "invalid data\n" unless $p =~ /^[A-Za-z0-9\+\/\=]+$/;
        $self->cork;
        return 1;
    };

    my $orig_convert = \&Mail::DKIM::PublicKey::convert;
    *Mail::DKIM::PublicKey::convert = sub {
        my ($self) = @_;
        return $orig_convert->(@_) unless ( $self->get_tag('k') // '' ) eq 'ed25519';
        $self->cork( LocalKeys::Ed25519Cork->new( MIME::Base64::decode_base64( $self->data ) ) );
        return 1;
    };

    # An Ed25519 signature must not be checked against an RSA key and vice versa.
    my $orig_check_public_key = \&Mail::DKIM::Verifier::check_public_key;
    *Mail::DKIM::Verifier::check_public_key = sub {
        my ( $self, $signature, $public_key ) = @_;
        my $want = ( $signature->algorithm // '' ) =~ /^ed25519/ ? 'ed25519' : 'rsa';
        my $have = $public_key->get_tag('k') || 'rsa';
        if ( $want ne $have ) {
            $self->{signature_reject_reason} = "public key: key type $have for $want signature";
            return 0;
        }
        return $orig_check_public_key->(@_);
    };
}

my $keys_file = shift @ARGV or die "usage: $0 KEYS_FILE < message\n";
Mail::DKIM::DNS::resolver( LocalKeys::Resolver->new($keys_file) );

binmode STDIN;
my $dkim = Mail::DKIM::Verifier->new();
while ( my $chunk = <STDIN> ) {
    # Mail::DKIM wants CRLF; an LF-only message is what an SMTP client would send as CRLF.
    $chunk =~ s/(?<!\r)\n/\r\n/g;
    $dkim->PRINT($chunk);
}
$dkim->CLOSE;

for my $signature ( $dkim->signatures ) {
    printf "%s a=%s d=%s s=%s; %s\n",
      $signature->result,
      $signature->algorithm // '',
      $signature->domain    // '',
      $signature->selector  // '',
      $signature->result_detail // '';
}
printf "overall %s\n", $dkim->result;
